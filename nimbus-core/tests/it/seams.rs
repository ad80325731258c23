//! The control plane's shared seam suite (`control_plane::testsuite`): every case
//! on SQLite and PostgreSQL, through the in-process API and over HTTP, so the two
//! ways in behave alike.

use std::sync::Arc;

use nimbus_core::control_plane::testsuite::{self, Connect, InProcess, OverHttp};
use nimbus_core::{Secret, Store};

use crate::api::{Api, JWT_SECRET};

async fn in_process(store: Arc<dyn Store>) -> Box<dyn Connect> {
    Box::new(InProcess(Api::new(store, &[]).await.state))
}

async fn over_http(store: Arc<dyn Store>) -> Box<dyn Connect> {
    let state = Api::new(store, &[]).await.state;
    Box::new(OverHttp::serve(state, &Secret::new(JWT_SECRET)).await)
}

macro_rules! seam_suite {
    ($name:ident, $store:expr, $connect:ident) => {
        mod $name {
            seam_suite!(@cases $store, $connect;
                callers_see_only_their_org,
                bad_input_is_refused_alike,
                a_job_from_submit_to_complete,
                a_workflow_job_with_its_workspace_and_result,
                analytics_answer_alike
            );
        }
    };
    (@cases $store:expr, $connect:ident; $($case:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store: Option<std::sync::Arc<dyn nimbus_core::Store>> = $store.await;
                if let Some(store) = store {
                    let connect = super::$connect(store).await;
                    super::testsuite::$case(connect.as_ref()).await;
                }
            }
        )+
    };
}

seam_suite!(
    sqlite_in_process,
    async { Some(nimbus_core::store::testsuite::sqlite_store().await) },
    in_process
);
seam_suite!(
    sqlite_over_http,
    async { Some(nimbus_core::store::testsuite::sqlite_store().await) },
    over_http
);
seam_suite!(
    postgres_in_process,
    nimbus_core::store::testsuite::postgres_store(),
    in_process
);
seam_suite!(
    postgres_over_http,
    nimbus_core::store::testsuite::postgres_store(),
    over_http
);
