//! QEMU boot-test harness (to be written)
