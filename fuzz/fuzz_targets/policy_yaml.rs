#![no_main]
//! Any policy file must load into a policy or a typed error (with a position),
//! and a loaded policy must judge any job without panicking.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match nimbus_policy::Policy::from_yaml(text) {
        Ok(policy) => {
            let facts = nimbus_policy::JobFacts {
                org_id: 7,
                repository: "acme/app".into(),
                workflow_name: Some("CI".into()),
                job_name: Some("build".into()),
                labels: vec!["nimbus".into(), "gpu".into(), "param:x=1".into()],
                timeout_minutes: 30,
            };
            let _ = policy.evaluate(&facts);
        }
        Err(error) => {
            let _ = nimbus_policy::describe_error("policy.yaml", &error);
        }
    }
});
