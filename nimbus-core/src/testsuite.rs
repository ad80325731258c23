//! Helpers every crate's tests share (feature `testsuite`). The shared suites of
//! the traits live beside them: [`crate::store::testsuite`],
//! [`crate::control_plane::testsuite`].

/// Whether the tests run under CI (`CI=true`), where a missing service fails the
/// run instead of skipping the test.
pub fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// `value`, or — when it is `None` — a failed test under CI and a skipped one
/// elsewhere (`what` is not available here: say what is missing and how to get it).
pub fn require<T>(value: Option<T>, what: &str) -> Option<T> {
    if value.is_none() {
        if ci() {
            panic!("{what} is not available and CI=true: the test cannot be skipped in CI (scripts/test.sh starts the services)");
        }
        eprintln!("skipping: {what} is not available");
    }
    value
}

/// The non-empty value of the test setting `name` (e.g. `NIMBUS_TEST_DATABASE_URL`),
/// through [`require`].
pub fn setting(name: &str) -> Option<String> {
    let value = std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    require(value, name)
}
