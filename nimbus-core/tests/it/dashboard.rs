//! The dashboard through the router: sign-in into the cookie, the page's figures
//! for the analytics data set, each org seeing its own, the metadata picker, the
//! headers that keep the page to itself. (Headless Chromium drives it end to end
//! in tests/e2e/tests/e2e/dashboard.rs.)

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use std::time::Duration;

use nimbus_core::domain::CompletionStatus::*;
use nimbus_core::store::testsuite::{direct_job, run_job, sqlite_store};
use nimbus_core::store::{Admission, LeaseRequest};

use crate::api::{Api, Reply};

/// The analytics data set's shape, created in the last hours (the page shows
/// recent days): org 1 with five jobs over `lr`, org 2 with three.
async fn seeded() -> Api {
    let store = sqlite_store().await;
    let hours_ago = |h: u64| time::OffsetDateTime::now_utc() - Duration::from_secs(h * 3600);
    run_job(&store, 1, &["param:lr=0.1"], hours_ago(9), 2, 60, Succeeded).await;
    run_job(&store, 1, &["param:lr=0.1"], hours_ago(8), 4, 120, Failed).await;
    run_job(
        &store,
        1,
        &["param:lr=0.01"],
        hours_ago(7),
        6,
        30,
        Succeeded,
    )
    .await;
    run_job(
        &store,
        2,
        &["meta:batch=64"],
        hours_ago(6),
        1,
        10,
        Succeeded,
    )
    .await;
    run_job(
        &store,
        1,
        &["param:lr=0.01", "param:batch=32"],
        hours_ago(5),
        8,
        45,
        TimedOut,
    )
    .await;
    let mut rejected = direct_job(2, "acme/app", &["meta:batch=64"]);
    rejected.rejected = true;
    store
        .enqueue(rejected, &Admission::default(), hours_ago(4))
        .await
        .expect("rejected");
    let queued = direct_job(1, "acme/app", &["param:lr=0.1"]);
    store
        .enqueue(queued, &Admission::default(), hours_ago(3))
        .await
        .expect("queued");
    let running = direct_job(2, "acme/app", &[]);
    store
        .enqueue(running, &Admission::default(), hours_ago(2))
        .await
        .expect("running");
    let only_org_2 = LeaseRequest {
        agent_id: "dashboard".into(),
        org_id: Some(2),
        labels: None,
        ttl: Duration::from_secs(3600),
    };
    store
        .lease(&only_org_2, hours_ago(1))
        .await
        .expect("lease")
        .expect("org 2's job");
    let api = Api::new(store, &[("NIMBUS_CACHE_URL", "http://127.0.0.1:9")]).await;
    api.add_org(1, "acme").await;
    api.add_org(2, "globex").await;
    api
}

async fn get(api: &Api, uri: &str, cookie: Option<&str>) -> Reply {
    let mut request = Request::builder().uri(uri);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    api.send(request.body(Body::empty()).expect("request"))
        .await
}

async fn sign_in(api: &Api, token: &str) -> Reply {
    let request = Request::builder()
        .method("POST")
        .uri("/dashboard/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={token}")))
        .expect("request");
    api.send(request).await
}

fn text(reply: &Reply) -> &str {
    reply.body.as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_keeps_the_token_in_a_strict_http_only_cookie() {
    let api = seeded().await;
    let page = get(&api, "/dashboard", None).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(
        text(&page).contains("action=\"/dashboard/login\""),
        "the sign-in form"
    );

    let signed_in = sign_in(&api, &api.admin()).await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    assert_eq!(signed_in.headers[header::LOCATION], "/dashboard");
    let cookie = signed_in.headers[header::SET_COOKIE]
        .to_str()
        .expect("cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    let cookie = cookie.split(';').next().expect("name=value").to_string();

    let page = get(&api, "/dashboard", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", text(&page));
    let csp = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .expect("csp");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");

    let bad = sign_in(&api, "not-a-token").await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.headers.get(header::SET_COOKIE).is_none());
    let agent = sign_in(&api, &api.agent()).await;
    assert_eq!(agent.status, StatusCode::FORBIDDEN);
    let empty = sign_in(&api, "").await;
    assert_eq!(empty.status, StatusCode::UNAUTHORIZED);
    // Another site's form cannot sign a visitor in; the dashboard's own page can.
    let cross_site = |origin: &str| {
        Request::builder()
            .method("POST")
            .uri("/dashboard/login")
            .header(header::HOST, "nimbus.example:8000")
            .header(header::ORIGIN, origin)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("token={}", api.admin())))
            .expect("request")
    };
    let foreign = api.send(cross_site("https://evil.example")).await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    assert!(foreign.headers.get(header::SET_COOKIE).is_none());
    let own = api.send(cross_site("http://nimbus.example:8000")).await;
    assert_eq!(own.status, StatusCode::SEE_OTHER);

    let out = api
        .send(
            Request::builder()
                .method("POST")
                .uri("/dashboard/logout")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert!(out.headers[header::SET_COOKIE]
        .to_str()
        .expect("cookie")
        .contains("Max-Age=0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_each_org_its_own_figures() {
    let api = seeded().await;
    let admin = format!("nimbus_dashboard={}", api.admin());
    let page = get(&api, "/dashboard", Some(&admin)).await;
    let html = text(&page).to_string();
    assert_eq!(page.status, StatusCode::OK, "{html}");
    for expected in [
        "<tr data-org=\"1\"><td class=\"n\">1</td><td>acme</td><td class=\"n total\">5</td>",
        "<tr data-org=\"2\"><td class=\"n\">2</td><td>globex</td><td class=\"n total\">3</td>",
        "<option value=\"lr\">lr</option>",
        "<option value=\"batch\">batch</option>",
        "Cache usage unavailable",
        "aria-label=\"Queue wait\"",
    ] {
        assert!(
            html.contains(expected),
            "the page lacks {expected}:\n{html}"
        );
    }

    let picked = get(&api, "/dashboard?metadata_key=lr", Some(&admin)).await;
    let html = text(&picked).to_string();
    assert!(
        html.contains("<option value=\"lr\" selected>lr</option>"),
        "{html}"
    );
    assert!(
        html.contains("<tr data-value=\"0.01\"><td>0.01</td><td class=\"n total\">2</td>"),
        "{html}"
    );
    assert!(
        html.contains("<tr data-value=\"0.1\"><td>0.1</td><td class=\"n total\">3</td>"),
        "{html}"
    );

    let globex = format!("nimbus_dashboard={}", api.org(2));
    let own = get(&api, "/dashboard?metadata_key=lr", Some(&globex)).await;
    let html = text(&own).to_string();
    assert_eq!(own.status, StatusCode::OK);
    assert!(
        html.contains("<td>globex</td>") && !html.contains("<td>acme</td>"),
        "{html}"
    );
    assert!(
        !html.contains("lr=0.1"),
        "no job of org 1 is listed: {html}"
    );
    assert!(html.contains("no jobs carry this key"), "{html}");
    let foreign = get(&api, "/dashboard?org_id=1", Some(&globex)).await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);
    // Org 1's job (id 1) is not org 2's to follow, on the page or the relay.
    let follow = get(&api, "/dashboard?log=1", Some(&globex)).await;
    assert_eq!(follow.status, StatusCode::NOT_FOUND);
    let relay = get(&api, "/dashboard/jobs/1/log", Some(&globex)).await;
    assert_eq!(relay.status, StatusCode::NOT_FOUND);
    // The admin's relay reaches for the pipeline, which is not running here.
    let relay = get(&api, "/dashboard/jobs/1/log", Some(&admin)).await;
    assert_eq!(relay.status, StatusCode::SERVICE_UNAVAILABLE);

    let bad = get(&api, "/dashboard?days=1000", Some(&admin)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(text(&bad).contains("days must be between 1 and 90"));
    let script = get(&api, "/dashboard/assets/dashboard.js", None).await;
    assert_eq!(script.status, StatusCode::OK);
    assert!(script.headers[header::CONTENT_TYPE]
        .to_str()
        .expect("type")
        .starts_with("text/javascript"));
    let missing = get(&api, "/dashboard/assets/../Cargo.toml", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}
