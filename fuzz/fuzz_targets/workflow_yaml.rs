#![no_main]
//! Any workflow file given to `nimbus run` must read into checked jobs or a
//! clear error; its static matrices expand or are refused; any text is an
//! expression template or an error (never a panic, never unbounded recursion).

use libfuzzer_sys::fuzz_target;
use nimbus_vmm::workflow::expr::{Condition, Contexts, Template};
use nimbus_vmm::workflow::plan::{self, Workflow};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let contexts = Contexts::new();
    if let Ok(template) = Template::parse(text) {
        let _ = template.value(&contexts);
    }
    if let Ok(condition) = Condition::parse(text) {
        let _ = condition.holds(&contexts);
    }
    let Ok(workflow) = Workflow::parse("fuzz.yml", text) else {
        return;
    };
    let _ = workflow.stages();
    let _ = workflow.selection(&["build".to_string()]);
    for job in &workflow.jobs {
        if let Some(matrix) = &job.matrix {
            let order = plan::matrix_key_order(workflow.source_text(), matrix);
            let _ = plan::combinations(Some(matrix), &order);
        }
    }
});
