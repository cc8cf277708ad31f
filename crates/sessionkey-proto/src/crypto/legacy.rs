//! Legacy DES and 3DES suites (in progress).
