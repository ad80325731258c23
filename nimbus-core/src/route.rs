//! Route tables: each service's HTTP API is a list of [`Route`]s — method, path
//! template, who may call it ([`Access`]) and handler — and its axum router is
//! built from that list alone ([`router`]). The list is the documentation of the
//! API's access rules (docs/security.md) and what the isolation matrix test walks:
//! a route added to a service is in its table, so it is tested like every other.

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::MethodRouter;
use axum::Router;

/// What a caller of another org (or another agent, for lease routes) gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    /// The route names one resource; another tenant's is "not found" (404).
    NotFound,
    /// The route lists or counts; another tenant's rows are left out (2xx).
    Filtered,
    /// The route acts on a lease; a lease of another agent is a conflict (409)
    /// that tells nothing of it.
    Conflict,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health checks).
    Public,
    /// Loopback peers, or `Authorization: Bearer <the service's metrics token>`.
    Metrics,
    /// GitHub: an `X-Hub-Signature-256` over the body with the webhook secret.
    GithubSignature,
    /// API tokens (JWTs for this service) of the roles marked; other roles get 403.
    Token {
        /// Admin tokens may call it.
        admin: bool,
        /// Org tokens may call it.
        org: bool,
        /// Agent tokens may call it.
        agent: bool,
        /// What a caller of another org (or agent) gets.
        foreign: Foreign,
    },
    /// A cache token of the resource's org and repository; `write` routes refuse
    /// read-only tokens (403). Another org's entries are misses or "not found".
    CacheToken {
        /// The route saves or changes entries.
        write: bool,
    },
    /// A link the cache proxy signed (expiry and HMAC in the query), no bearer.
    CacheLink,
    /// A cache token (its org), or an org or admin API token.
    CacheUsage,
    /// A log ingest token of the job's lease, or an admin token.
    LogIngest,
    /// The cache proxy's OCI registry: a registry token from its `/v2/token`, or
    /// an org or admin API token or a cache token (Bearer, or the password of
    /// Basic). Rights follow the repository's name: mirrors are pulled by all and
    /// pushed by none, `org-{id}/` is its org's; another org's repository is
    /// unknown (pull) or denied (push). Failures are the OCI spec's errors.
    Registry,
    /// The dashboard's sign-in form: anyone may post it; the credential is the
    /// token in the form (never a header), so a request without one is 401.
    DashboardLogin,
}

/// One route of a service.
pub struct Route<S> {
    /// The HTTP method.
    pub method: Method,
    /// The path template, as axum matches it (`/api/jobs/{id}`).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    handler: MethodRouter<S>,
}

impl<S: Clone + Send + Sync + 'static> Route<S> {
    fn new(method: Method, path: &'static str, access: Access, handler: MethodRouter<S>) -> Self {
        Route {
            method,
            path,
            access,
            handler,
        }
    }

    /// A `GET` route.
    pub fn get<H: Handler<T, S>, T: 'static>(
        path: &'static str,
        access: Access,
        handler: H,
    ) -> Self {
        Route::new(Method::GET, path, access, axum::routing::get(handler))
    }

    /// A `HEAD` route.
    pub fn head<H: Handler<T, S>, T: 'static>(
        path: &'static str,
        access: Access,
        handler: H,
    ) -> Self {
        Route::new(Method::HEAD, path, access, axum::routing::head(handler))
    }

    /// A `POST` route.
    pub fn post<H: Handler<T, S>, T: 'static>(
        path: &'static str,
        access: Access,
        handler: H,
    ) -> Self {
        Route::new(Method::POST, path, access, axum::routing::post(handler))
    }

    /// A `PUT` route.
    pub fn put<H: Handler<T, S>, T: 'static>(
        path: &'static str,
        access: Access,
        handler: H,
    ) -> Self {
        Route::new(Method::PUT, path, access, axum::routing::put(handler))
    }

    /// A `PATCH` route.
    pub fn patch<H: Handler<T, S>, T: 'static>(
        path: &'static str,
        access: Access,
        handler: H,
    ) -> Self {
        Route::new(Method::PATCH, path, access, axum::routing::patch(handler))
    }

    /// This route accepts bodies up to `bytes` (over the service's default limit).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.handler = self
            .handler
            .layer(axum::extract::DefaultBodyLimit::max(bytes));
        self
    }

    /// A `DELETE` route.
    pub fn delete<H: Handler<T, S>, T: 'static>(
        path: &'static str,
        access: Access,
        handler: H,
    ) -> Self {
        Route::new(Method::DELETE, path, access, axum::routing::delete(handler))
    }
}

/// The router of a route table (routes of one path share a method router, as
/// axum merges them).
pub fn router<S: Clone + Send + Sync + 'static>(routes: Vec<Route<S>>) -> Router<S> {
    routes.into_iter().fold(Router::new(), |router, route| {
        router.route(route.path, route.handler)
    })
}

/// The method and path of every route, for listings and tests.
pub fn describe<S>(routes: &[Route<S>]) -> Vec<(Method, &'static str, Access)> {
    routes
        .iter()
        .map(|route| (route.method.clone(), route.path, route.access))
        .collect()
}
