//! The reports of `nimbus report` / `nimbus jobs list` over the analytics data
//! set: snapshot tests of their tables and JSON (tests/it/snapshots/), through
//! the in-process API; and the same command over HTTP with a good, a bad and a
//! secret-for-a-token `--token`, and with the server down.

use nimbus_core::auth::Principal;
use nimbus_core::control_plane::ControlPlaneApi;
use nimbus_core::report::{self, Connection, JobsCommand, ReportCommand, Services};
use nimbus_core::store::testsuite::{seed_analytics, sqlite_store};
use nimbus_core::{Env, Secret};

use crate::api::{Api, JWT_SECRET};

async fn seeded() -> Api {
    let store = sqlite_store().await;
    seed_analytics(&store).await;
    let api = Api::new(store, &[("NIMBUS_METADATA_DEFAULT_KEYS", "lr,batch")]).await;
    api.add_org(1, "acme").await;
    api.add_org(2, "globex").await;
    api
}

fn services(json: bool) -> Services {
    Services {
        base_url: "http://control-plane.test".into(),
        cache_url: "http://cache.test".into(),
        logs_url: "http://logs.test".into(),
        token: None,
        json,
        colour: false,
        output: None,
    }
}

async fn run(api: &dyn ControlPlaneApi, command: ReportCommand, json: bool) -> String {
    report::report(api, &services(json), &command)
        .await
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

fn orgs(metadata_key: Option<&str>) -> ReportCommand {
    ReportCommand::Orgs {
        metadata_key: metadata_key.map(str::to_string),
        since: None,
        until: None,
        org_id: None,
    }
}

fn metadata(trend: bool) -> ReportCommand {
    ReportCommand::Metadata {
        key: "lr".into(),
        trend,
        bucket_hours: 24,
        since: Some("2026-11-27".into()),
        until: Some("2026-11-29".into()),
        org_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_tables_and_json() {
    let api = seeded().await;
    let admin = api.state.session(Principal::Admin { sub: "ops".into() });
    insta::assert_snapshot!("orgs_table", run(&admin, orgs(None), false).await);
    insta::assert_snapshot!("orgs_json", run(&admin, orgs(None), true).await);
    insta::assert_snapshot!(
        "orgs_by_lr_table",
        run(&admin, orgs(Some("lr")), false).await
    );
    insta::assert_snapshot!("metadata_table", run(&admin, metadata(false), false).await);
    insta::assert_snapshot!("metadata_json", run(&admin, metadata(false), true).await);
    insta::assert_snapshot!(
        "metadata_trend_table",
        run(&admin, metadata(true), false).await
    );
    insta::assert_snapshot!(
        "metadata_presets_table",
        run(&admin, ReportCommand::MetadataPresets, false).await
    );
    let jobs = ReportCommand::Jobs {
        metadata_key: Some("lr".into()),
        metadata_value: None,
        job_metadata_key: Some("lr".into()),
        job_metadata_value: Some("0.1".into()),
        job_id: None,
        org_id: None,
        limit: 20,
    };
    insta::assert_snapshot!("jobs_table", run(&admin, jobs, false).await);
    let list = JobsCommand::List {
        with_metadata: true,
        status: None,
        org_id: None,
        metadata_key: None,
        metadata_value: None,
        limit: 50,
    };
    let listed = report::jobs(&admin, &services(false), &list)
        .await
        .expect("jobs list");
    insta::assert_snapshot!("jobs_list_with_metadata_table", listed);

    // An org's token reports its own org only.
    let globex = api.state.session(Principal::Org {
        org_id: 2,
        sub: "org-2".into(),
    });
    let own = run(&globex, orgs(None), false).await;
    assert!(own.contains("globex") && !own.contains("acme"), "{own}");
}

/// Serves `api`'s router on a loopback port; returns its URL.
async fn serve(api: &Api) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let app = nimbus_core::control_plane::router(api.state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    url
}

fn connect(base_url: &str, token: &str) -> Services {
    let connection = Connection {
        base_url: Some(base_url.into()),
        token: Some(token.into()),
        ..Connection::default()
    };
    Services::resolve(
        &connection,
        &Env::from_map([("NIMBUS_TOKEN", "ignored.when.given")]),
    )
    .expect("resolve")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_over_http_name_what_went_wrong() {
    let api = seeded().await;
    let url = serve(&api).await;
    let by_token = connect(&url, &api.admin());
    let client = by_token.control_plane().expect("client");
    let table = report::report(&client, &by_token, &orgs(None))
        .await
        .expect("report");
    let admin = api.state.session(Principal::Admin { sub: "ops".into() });
    assert_eq!(
        table,
        run(&admin, orgs(None), false).await,
        "over HTTP as in process"
    );

    // The guide passes $NIMBUS_JWT_SECRET as --token: an admin token is minted.
    let by_secret = connect(&url, JWT_SECRET);
    let client = by_secret.control_plane().expect("client");
    let minted = report::report(&client, &by_secret, &orgs(None))
        .await
        .expect("report");
    assert_eq!(minted, table);

    let wrong = connect(&url, "0123456789abcdef-not-the-secret");
    let client = wrong.control_plane().expect("client");
    let refused = report::report(&client, &wrong, &orgs(None))
        .await
        .expect_err("a token signed with another secret");
    assert!(refused.0.contains("refused the token (401)"), "{refused}");
    assert!(!refused.0.contains('\n'), "one line: {refused}");

    let down = connect("http://127.0.0.1:9", &api.admin());
    let client = down.control_plane().expect("client");
    let unreachable = report::report(&client, &down, &orgs(None))
        .await
        .expect_err("nothing listens on port 9");
    assert!(
        unreachable
            .0
            .starts_with("cannot reach the control plane at http://127.0.0.1:9"),
        "{unreachable}"
    );
    let cache = report::report(&client, &down, &ReportCommand::Cache)
        .await
        .expect_err("no cache proxy");
    assert!(
        cache
            .0
            .starts_with("cannot reach the cache proxy at http://127.0.0.1:8001"),
        "{cache}"
    );

    // An overview with the cache proxy and the pipeline down: what there is
    // goes where --output says (not to the terminal), then the reasons fail it.
    let scratch = tempfile::tempdir().expect("tempdir");
    let written = scratch.path().join("overview.txt");
    let partial = Services::resolve(
        &Connection {
            base_url: Some(url.clone()),
            token: Some(api.admin()),
            cache_url: Some("http://127.0.0.1:9".into()),
            logs_url: Some("http://127.0.0.1:9".into()),
            output: Some(written.clone()),
            ..Connection::default()
        },
        &Env::from_map([("NIMBUS_TOKEN", "ignored.when.given")]),
    )
    .expect("resolve");
    let client = partial.control_plane().expect("client");
    let overview = ReportCommand::Overview {
        since: None,
        until: None,
    };
    let failed = report::report(&client, &partial, &overview)
        .await
        .expect_err("two services down");
    assert!(
        failed.0.contains("cache proxy") && failed.0.contains("logging pipeline"),
        "{failed}"
    );
    let text = std::fs::read_to_string(&written).expect("the partial overview was written");
    assert!(text.starts_with(table.trim_end()), "{text}");
    assert!(text.contains("\nCache\nunavailable: "), "{text}");

    // Short non-JWT strings are neither tokens nor secrets.
    let connection = Connection {
        token: Some("short".into()),
        ..Connection::default()
    };
    let error = Services::resolve(&connection, &Env::from_map([("X", "y")])).expect_err("short");
    assert!(
        error.0.contains("neither a token nor a JWT secret"),
        "{error}"
    );
}

#[test]
fn flags_fall_back_to_the_environment() {
    let env = Env::from_map([
        ("NIMBUS_CONTROL_PLANE_URL", "http://cp.example:8000/"),
        ("NIMBUS_TOKEN", "a.b.c"),
        ("NIMBUS_LOGS_URL", "http://logs.example"),
    ]);
    let services = Services::resolve(&Connection::default(), &env).expect("resolve");
    assert_eq!(services.base_url, "http://cp.example:8000");
    assert_eq!(services.logs_url, "http://logs.example");
    assert_eq!(services.cache_url, "http://127.0.0.1:8001");
    assert_eq!(services.token.as_ref().map(Secret::expose), Some("a.b.c"));
    let env = Env::from_map([
        ("NIMBUS_BASE_URL", "http://base.example"),
        ("NIMBUS_CONTROL_PLANE_URL", "http://cp.example"),
    ]);
    let services = Services::resolve(&Connection::default(), &env).expect("resolve");
    assert_eq!(services.base_url, "http://base.example");
    assert!(services.token.is_none());
}

#[test]
fn command_lines_parse_as_the_guide_writes_them() {
    // The guide's forms; exit code 2 is clap refusing the line.
    for line in [
        "nimbus report orgs --base-url http://127.0.0.1:1 --token a.b.c --metadata-key lr --json",
        "nimbus report --json jobs --metadata-key lr --metadata-value 0.1 --limit 5 --base-url http://127.0.0.1:1 --token a.b.c",
        "nimbus report metadata --key lr --trend --bucket-hours 6 --base-url http://127.0.0.1:1 --token a.b.c",
        "nimbus jobs list --with-metadata --base-url http://127.0.0.1:1 --token a.b.c",
    ] {
        let code = report::main(line.split(' ').map(str::to_string));
        assert_eq!(code, 1, "{line}: parses, then cannot reach the server");
    }
    let code = report::main("nimbus report orgs --colour".split(' ').map(str::to_string));
    assert_eq!(code, 2);
}
