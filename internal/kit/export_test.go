package kit

// GuestShadow is the kit's /etc/shadow, for the boot tests (package
// kit_test, which the test harness's import of kit keeps outside).
const GuestShadow = guestShadow
