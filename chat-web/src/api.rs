//! HTTP routes: the page, its assets, and a small JSON API over the client SDK.
//!
//! | method | path | body / query | answer |
//! |---|---|---|---|
//! | GET | `/` , `/app.js`, `/app.css` | | the page |
//! | POST | `/api/login` | `{"user"}` | `{"user","joined"}` + session cookie |
//! | POST | `/api/logout` | | `{}`, cookie cleared |
//! | GET | `/api/session` | | `{"user","joined"}` |
//! | GET | `/api/users` | | `{"users"}` |
//! | GET | `/api/channels` | | `{"channels","joined"}` |
//! | POST | `/api/channels` | `{"channel"}` | create (or find) and join: `{"channel","created"}` |
//! | POST | `/api/join`, `/api/leave` | `{"channel"}` | `{"channel"}` |
//! | POST | `/api/publish` | `{"channel","message"}` | `{}` |
//! | POST | `/api/message` | `{"to","message"}` | `{}` |
//! | GET | `/api/history/channel` | `?name=&before=&limit=` | `{"items","next"}` |
//! | GET | `/api/history/direct` | `?before=&limit=` | `{"items","next"}` (the user's own) |
//! | GET | `/api/cluster` | | [`crate::cluster::ClusterSnapshot`] |
//! | POST | `/api/check` | | [`chat_net::check::CheckReport`]: the cluster self-check, run here |
//! | GET | `/api/events` | | Server-Sent Events, one [`Item`] as JSON per event |
//!
//! `/api/users` and `/api/channels` leave out the cluster check's probe names (`_check-`).
//! Every `/api` route but `login` needs the session cookie. Errors are
//! [`ApiError`]s: `{"error": code, "message": sentence, "detail"}`. Writes must come from
//! the page's own origin (the `Origin` header, when present, must match `Host`), bodies are
//! size-limited, and every answer carries a strict Content-Security-Policy.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Query, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, HOST, ORIGIN, REFERRER_POLICY,
    SET_COOKIE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chat_core::protocol::HistoryPage;
use chat_core::validate::validate_name;
use chat_core::{HistoryTarget, NameKind, Publication, TOPIC_SERVERS};
use chat_net::check::{run_check, CheckConfig, CheckReport};
use chat_net::client::{Client, ClientConfig};
use chat_net::Shutdown;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};

use crate::assets;
use crate::cluster::ClusterView;
use crate::errors::ApiError;
use crate::session::{
    clear_cookie, new_token, set_cookie, token_from_cookie_header, Item, Refusal, Session, Sessions,
};
use crate::{WebConfig, WebLimits};

/// The Content-Security-Policy of every answer: only the page's own script and style.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Default and largest page size of history requests.
pub const HISTORY_PAGE: u32 = 50;
/// Largest page size a history request may ask for.
pub const MAX_HISTORY_PAGE: u32 = 200;

/// How long a request waits for a free SDK slot before giving up.
const SLOT_WAIT: Duration = Duration::from_secs(5);

/// State shared by every request.
pub struct AppState {
    /// Signed-in sessions.
    pub sessions: Sessions,
    /// SDK configuration of every client this server opens.
    pub client_config: ClientConfig,
    /// Limits in force.
    pub limits: WebLimits,
    /// The cluster table kept by the poller.
    pub cluster: Arc<Mutex<ClusterView>>,
    /// Raised when the server stops.
    pub stop: Shutdown,
    slots: Arc<Semaphore>,
    /// One cluster check at a time (a second click waits for the first, then runs).
    check: tokio::sync::Mutex<()>,
}

impl AppState {
    /// Fresh state for `cfg` with `limits`.
    pub fn new(cfg: &WebConfig, limits: WebLimits) -> Arc<AppState> {
        Arc::new(AppState {
            sessions: Sessions::new(
                limits.max_sessions,
                limits.max_sessions_per_ip,
                limits.idle_timeout,
            ),
            client_config: limits.client_config(cfg),
            cluster: Arc::new(Mutex::new(ClusterView::default())),
            stop: Shutdown::new(),
            slots: Arc::new(Semaphore::new(limits.max_concurrent_calls.max(1))),
            check: tokio::sync::Mutex::new(()),
            limits,
        })
    }

    /// Runs blocking SDK work on the blocking pool, at most `max_concurrent_calls` at once.
    pub async fn call<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = match tokio::time::timeout(SLOT_WAIT, self.slots.clone().acquire_owned()).await
        {
            Ok(Ok(p)) => p,
            _ => return Err(ApiError::busy()),
        };
        match tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        {
            Ok(r) => r,
            Err(e) => Err(ApiError::internal(format!("SDK call failed: {e}"))),
        }
    }
}

impl AppState {
    /// Like [`AppState::call`], within the session's own share of calls.
    pub async fn call_as<T, F>(&self, session: &Session, f: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let own =
            match tokio::time::timeout(SLOT_WAIT, session.calls().clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => return Err(ApiError::busy()),
            };
        let r = self.call(f).await;
        drop(own);
        r
    }
}

/// The routes, with body limit, origin check and security headers.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.limits.max_body_bytes;
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(script))
        .route("/app.css", get(style))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/session", get(session_info))
        .route("/api/users", get(users))
        .route("/api/channels", get(channels).post(create_channel))
        .route("/api/join", post(join))
        .route("/api/leave", post(leave))
        .route("/api/publish", post(publish))
        .route("/api/message", post(message))
        .route("/api/history/channel", get(channel_history))
        .route("/api/history/direct", get(direct_history))
        .route("/api/cluster", get(cluster))
        .route("/api/check", post(check))
        .route("/api/events", get(events))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(guard))
        .with_state(state)
}

/// Closes idle sessions every few seconds (runs until aborted).
pub async fn sweep_sessions(app: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let expired = app.sessions.sweep();
        if !expired.is_empty() {
            tracing::info!(count = expired.len(), "closed idle sessions");
            tokio::task::spawn_blocking(move || {
                for s in expired {
                    s.join_pump();
                }
            });
        }
    }
}

fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN) else {
        return true; // not a browser's cross-site request
    };
    let (Ok(origin), Some(host)) = (
        origin.to_str(),
        headers.get(HOST).and_then(|h| h.to_str().ok()),
    ) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

async fn guard(req: axum::extract::Request, next: Next) -> Response {
    let write = !matches!(*req.method(), Method::GET | Method::HEAD);
    if write && !same_origin(req.headers()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "Requests from other sites are refused.",
        )
        .into_response();
    }
    let api = req.uri().path().starts_with("/api/");
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if api {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

async fn not_found(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("There is nothing here ({method})."),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", assets::INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", assets::APP_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", assets::APP_CSS)
}

fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(token_from_cookie_header)
}

/// A request made within a live session.
pub struct Authed(pub Arc<Session>);

impl FromRequestParts<Arc<AppState>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let token = cookie_token(&parts.headers).ok_or_else(ApiError::not_signed_in)?;
        state
            .sessions
            .get(token)
            .map(Authed)
            .ok_or_else(ApiError::not_signed_in)
    }
}

/// A JSON body whose rejections are [`ApiError`]s.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            status,
            "too_large",
            "That request is too large for chat-web; please send something shorter.",
        );
    }
    if let JsonRejection::MissingJsonContentType(_) = rejection {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request",
            "chat-web only accepts JSON requests.",
        );
    }
    ApiError {
        detail: Some(rejection.body_text()),
        ..ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "chat-web could not understand that request.",
        )
    }
}

/// Query parameters whose rejections are [`ApiError`]s.
pub struct QueryArgs<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryArgs<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(QueryArgs(v)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError {
        detail: Some(rejection.body_text()),
        ..ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "chat-web could not understand that request.",
        )
    }
}

fn refusal(r: Refusal) -> ApiError {
    match r {
        Refusal::Full => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_sessions",
            "Too many people are signed in to this web server; please try again later.",
        ),
        Refusal::TooManyFromAddress => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sessions",
            "Too many sessions are open from your address; sign out of another one first.",
        ),
    }
}

fn name_arg(kind: NameKind, raw: &str) -> Result<String, ApiError> {
    let name = raw.trim().to_string();
    validate_name(kind, &name)?;
    Ok(name)
}

/// `{"user","joined"}`: who the session is.
#[derive(Debug, Serialize)]
struct SessionInfo {
    user: String,
    joined: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct LoginBody {
    user: String,
}

async fn login(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<LoginBody>,
) -> Result<Response, ApiError> {
    let user = name_arg(NameKind::User, &body.user)?;
    // Signing in again replaces this browser's previous session.
    if let Some(old) = cookie_token(&headers).and_then(|t| app.sessions.remove(t)) {
        tracing::info!(user = %old.user(), "replaced by a new sign-in");
    }
    app.sessions.check_room(peer.ip()).map_err(refusal)?;
    let cfg = app.client_config.clone();
    let name = user.clone();
    let client = app
        .call(move || {
            let c = Client::connect(cfg)?;
            c.login(&name)?;
            c.subscribe(&name)?;
            c.subscribe(TOPIC_SERVERS)?;
            Ok(c)
        })
        .await?;
    let session = Session::new(
        new_token(),
        user.clone(),
        peer.ip(),
        Arc::new(client),
        app.limits.max_streams_per_session,
    );
    if let Err(r) = app.sessions.insert(session.clone()) {
        tokio::task::spawn_blocking(move || drop(session));
        return Err(refusal(r));
    }
    if let Err(e) = session.start_pump() {
        app.sessions.remove(session.token());
        return Err(ApiError::internal(format!("cannot start a thread: {e}")));
    }
    let cookie = HeaderValue::from_str(&set_cookie(session.token()))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    tracing::info!(%user, ip = %peer.ip(), "signed in");
    let mut res = Json(SessionInfo {
        user,
        joined: Vec::new(),
    })
    .into_response();
    res.headers_mut().insert(SET_COOKIE, cookie);
    Ok(res)
}

async fn logout(headers: HeaderMap, State(app): State<Arc<AppState>>) -> Response {
    if let Some(s) = cookie_token(&headers).and_then(|t| app.sessions.remove(t)) {
        tracing::info!(user = %s.user(), "signed out");
    }
    let mut res = Json(serde_json::json!({})).into_response();
    if let Ok(v) = HeaderValue::from_str(&clear_cookie()) {
        res.headers_mut().insert(SET_COOKIE, v);
    }
    res
}

async fn session_info(Authed(s): Authed) -> Json<SessionInfo> {
    Json(SessionInfo {
        user: s.user().to_string(),
        joined: s.joined(),
    })
}

/// Names without the cluster check's probe user and channel (not for people).
fn without_probes(names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| !chat_core::validate::is_probe_name(n))
        .collect()
}

#[derive(Debug, Serialize)]
struct UsersReply {
    users: Vec<String>,
}

async fn users(
    State(app): State<Arc<AppState>>,
    Authed(s): Authed,
) -> Result<Json<UsersReply>, ApiError> {
    let client = s.client().clone();
    let users = app.call_as(&s, move || Ok(client.users()?)).await?;
    Ok(Json(UsersReply {
        users: without_probes(users),
    }))
}

#[derive(Debug, Serialize)]
struct ChannelsReply {
    channels: Vec<String>,
    joined: Vec<String>,
}

async fn channels(
    State(app): State<Arc<AppState>>,
    Authed(s): Authed,
) -> Result<Json<ChannelsReply>, ApiError> {
    let client = s.client().clone();
    let channels = app.call_as(&s, move || Ok(client.channels()?)).await?;
    Ok(Json(ChannelsReply {
        channels: without_probes(channels),
        joined: s.joined(),
    }))
}

#[derive(Debug, Deserialize)]
struct ChannelBody {
    channel: String,
}

#[derive(Debug, Serialize)]
struct ChannelReply {
    channel: String,
    created: bool,
}

async fn create_channel(
    State(app): State<Arc<AppState>>,
    Authed(s): Authed,
    JsonBody(body): JsonBody<ChannelBody>,
) -> Result<Json<ChannelReply>, ApiError> {
    let channel = name_arg(NameKind::Channel, &body.channel)?;
    let (session, name) = (s.clone(), channel.clone());
    let created = app
        .call_as(&s, move || {
            let created = match session.client().create_channel(&name) {
                Ok(()) => true,
                Err(e) if e.code() == chat_core::ErrorCode::AlreadyExists => false,
                Err(e) => return Err(e.into()),
            };
            session.add_joined(&name);
            session.client().subscribe(&name)?;
            Ok(created)
        })
        .await?;
    Ok(Json(ChannelReply { channel, created }))
}

async fn join(
    State(app): State<Arc<AppState>>,
    Authed(s): Authed,
    JsonBody(body): JsonBody<ChannelBody>,
) -> Result<Json<ChannelReply>, ApiError> {
    let channel = name_arg(NameKind::Channel, &body.channel)?;
    let (session, name) = (s.clone(), channel.clone());
    app.call_as(&s, move || {
        session.add_joined(&name);
        session.client().subscribe(&name)?;
        Ok(())
    })
    .await?;
    Ok(Json(ChannelReply {
        channel,
        created: false,
    }))
}

async fn leave(
    State(app): State<Arc<AppState>>,
    Authed(s): Authed,
    JsonBody(body): JsonBody<ChannelBody>,
) -> Result<Json<ChannelReply>, ApiError> {
    let channel = name_arg(NameKind::Channel, &body.channel)?;
    let (session, name) = (s.clone(), channel.clone());
    app.call_as(&s, move || {
        // A channel named like the user shares its topic: keep receiving private messages.
        if session.remove_joined(&name) && name != session.user() {
            session.client().unsubscribe(&name)?;
        }
        Ok(())
    })
    .await?;
    Ok(Json(ChannelReply {
        channel,
        created: false,
    }))
}

fn non_empty(message: &str) -> Result<(), ApiError> {
    if message.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Write something before sending.",
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct PublishBody {
    channel: String,
    message: String,
}

async fn publish(
    State(app): State<Arc<AppState>>,
    Authed(s): Authed,
    JsonBody(body): JsonBody<PublishBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let channel = name_arg(NameKind::Channel, &body.channel)?;
    non_empty(&body.message)?;
    let client = s.client().clone();
    let user = s.user().to_string();
    app.call_as(&s, move || {
        Ok(client.publish(&user, &channel, &body.message)?)
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}

#[derive(Debug, Deserialize)]
struct MessageBody {
    to: String,
    message: String,
}

async fn message(
    State(app): State<Arc<AppState>>,
    Authed(s): Authed,
    JsonBody(body): JsonBody<MessageBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let to = name_arg(NameKind::User, &body.to)?;
    non_empty(&body.message)?;
    let session = s.clone();
    app.call_as(&s, move || {
        let user = session.user();
        session.client().send_message(user, &to, &body.message)?;
        // The message is published to its recipient only: show the sender's own copy to
        // the sender's tabs (a message to oneself arrives by the subscription anyway).
        if to != user {
            let item = Item::sent_direct(user, &to, &body.message, session.client().clock());
            session.deliver(&item.to_json());
        }
        Ok(())
    })
    .await?;
    Ok(Json(serde_json::json!({})))
}

#[derive(Debug, Deserialize)]
struct ChannelHistoryQuery {
    name: String,
    before: Option<String>,
    limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct DirectHistoryQuery {
    before: Option<String>,
    limit: Option<u32>,
}

#[derive(Debug, Serialize)]
struct HistoryReply {
    items: Vec<Item>,
    next: Option<String>,
}

impl From<HistoryPage> for HistoryReply {
    fn from(page: HistoryPage) -> Self {
        HistoryReply {
            items: page
                .items
                .iter()
                .map(|p| match p {
                    Publication::Channel(c) => Item::from(c),
                    Publication::Direct(d) => Item::from(d),
                })
                .collect(),
            next: page.next,
        }
    }
}

fn page_size(limit: Option<u32>) -> u32 {
    limit.unwrap_or(HISTORY_PAGE).clamp(1, MAX_HISTORY_PAGE)
}

fn cursor(before: Option<String>) -> Option<String> {
    before.filter(|b| !b.is_empty())
}

async fn history(
    app: &AppState,
    s: &Session,
    target: HistoryTarget,
    before: Option<String>,
    limit: Option<u32>,
) -> Result<Json<HistoryReply>, ApiError> {
    let (before, limit) = (cursor(before), page_size(limit));
    let client = s.client().clone();
    let page = app
        .call_as(s, move || Ok(client.history(target, before, limit)?))
        .await?;
    Ok(Json(page.into()))
}

async fn channel_history(
    State(app): State<Arc<AppState>>,
    Authed(s): Authed,
    QueryArgs(q): QueryArgs<ChannelHistoryQuery>,
) -> Result<Json<HistoryReply>, ApiError> {
    let channel = name_arg(NameKind::Channel, &q.name)?;
    history(&app, &s, HistoryTarget::Channel(channel), q.before, q.limit).await
}

async fn direct_history(
    State(app): State<Arc<AppState>>,
    Authed(s): Authed,
    QueryArgs(q): QueryArgs<DirectHistoryQuery>,
) -> Result<Json<HistoryReply>, ApiError> {
    let me = HistoryTarget::User(s.user().to_string());
    history(&app, &s, me, q.before, q.limit).await
}

async fn cluster(
    State(app): State<Arc<AppState>>,
    Authed(_): Authed,
) -> Json<crate::cluster::ClusterSnapshot> {
    let stale_after = app.limits.status_interval * 3;
    Json(app.cluster.lock().snapshot(Instant::now(), stale_after))
}

/// Runs the cluster self-check from here (chat-web's own SDK client, through the broker and
/// proxy it serves): every server the cluster panel knows must answer.
async fn check(
    State(app): State<Arc<AppState>>,
    Authed(s): Authed,
) -> Result<Json<CheckReport>, ApiError> {
    let _one_at_a_time = app.check.lock().await;
    let cfg = CheckConfig {
        client: app.client_config.clone(),
        expect_servers: app.cluster.lock().known_servers(),
        delivery_timeout: app.client_config.timeout,
        ..CheckConfig::default()
    };
    tracing::info!(user = %s.user(), "cluster check");
    let report = app.call(move || Ok(run_check(&cfg))).await?;
    tracing::info!(ok = report.ok, summary = %report.summary(), "cluster check done");
    Ok(Json(report))
}

async fn events(
    State(app): State<Arc<AppState>>,
    Authed(s): Authed,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = s.open_stream(app.limits.stream_queue);
    let stream = ReceiverStream::new(rx).map(|json| Ok(Event::default().data(&*json)));
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_must_match_host() {
        let mut h = HeaderMap::new();
        assert!(
            same_origin(&h),
            "no Origin: not a cross-site browser request"
        );
        h.insert(HOST, HeaderValue::from_static("127.0.0.1:8080"));
        h.insert(ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(same_origin(&h));
        h.insert(ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(!same_origin(&h));
        h.insert(ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }

    #[test]
    fn page_sizes_are_clamped() {
        assert_eq!(page_size(None), HISTORY_PAGE);
        assert_eq!(page_size(Some(0)), 1);
        assert_eq!(page_size(Some(10_000)), MAX_HISTORY_PAGE);
        assert_eq!(cursor(Some(String::new())), None);
    }
}
