// gatevisor dashboard: the VM page's live event stream. Every field of an
// event is written with textContent, never as markup: the guest chose
// much of it (process names, paths).
"use strict";
(function () {
  const table = document.getElementById("event-table");
  if (!table || typeof EventSource === "undefined") {
    return;
  }
  const rows = document.getElementById("event-rows");
  const findings = document.getElementById("finding-rows");
  const status = document.getElementById("stream-status");
  const maxRows = 500;
  const say = (text, cls) => {
    status.textContent = text;
    status.className = "stream " + (cls || "");
  };
  const row = (cells, cls) => {
    const tr = document.createElement("tr");
    if (cls) {
      tr.className = cls;
    }
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c === undefined || c === null ? "" : String(c);
      tr.appendChild(td);
    }
    return tr;
  };
  const add = (body, tr) => {
    body.insertBefore(tr, body.firstChild);
    while (body.rows.length > maxRows) {
      body.deleteRow(body.rows.length - 1);
    }
  };
  const es = new EventSource(table.dataset.stream);
  es.addEventListener("open", () => say("live", "live"));
  es.addEventListener("ev", (e) => {
    const v = JSON.parse(e.data);
    const tr = row([v.seq, v.time, v.type, v.verdict, v.pid || "", v.comm, v.text], "v-" + (v.verdict || "none") + " new");
    tr.dataset.seq = v.seq;
    add(rows, tr);
    if (v.class === "finding") {
      add(findings, row([v.time, v.text], "sev-" + (v.severity || "none") + " new"));
    }
  });
  es.addEventListener("failure", (e) => {
    say("not streaming: " + JSON.parse(e.data).text, "err");
    es.close();
  });
  es.addEventListener("end", (e) => {
    say("ended: " + JSON.parse(e.data).text, "err");
    es.close();
  });
  es.onerror = () => {
    if (es.readyState !== EventSource.CLOSED) {
      say("reconnecting…", "warn");
    }
  };
})();
