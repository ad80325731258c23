//! The shared store suite, run against every backend from the same test code.

nimbus_core::store_test_suite!(sqlite, async {
    Some(nimbus_core::store::testsuite::sqlite_store().await)
});

nimbus_core::store_test_suite!(postgres, nimbus_core::store::testsuite::postgres_store());
