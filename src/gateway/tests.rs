//! Unit tests of the gateway: the hold and resend logic under a paused clock, who may call, what goes back.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::Request;
use tokio::sync::{Notify, mpsc};
use tower_service::Service;

use super::call::{Action, Call, Kind};
use super::forward::{Answer, Failure, Outcome};
use super::*;
use crate::metrics::Metrics;
use crate::sendsms::Verdict;
use crate::status::{Cause, RecheckRequest};

const HOLD: Duration = Duration::from_secs(30);
const KEY: &str = "the-api-key/5ecret+x";

/// An upstream that answers from a script, one entry per send, after `latency`.
#[derive(Default)]
struct Script {
    answers: Mutex<VecDeque<Result<Answer, Failure>>>,
    sent: Mutex<Vec<Call>>,
    latency: Duration,
}

impl Script {
    fn new(answers: impl IntoIterator<Item = Result<Answer, Failure>>) -> Arc<Self> {
        Arc::new(Script {
            answers: Mutex::new(answers.into_iter().collect()),
            ..Script::default()
        })
    }

    fn sends(&self) -> usize {
        crate::util::lock(&self.sent).len()
    }
}

impl Upstream for Script {
    fn send<'a>(
        &'a self,
        call: &'a Call,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Answer, Failure>> + Send + 'a>> {
        Box::pin(async move {
            crate::util::lock(&self.sent).push(call.clone());
            tokio::time::sleep(self.latency).await;
            crate::util::lock(&self.answers)
                .pop_front()
                .unwrap_or_else(|| Ok(api(1, "Message sent")))
        })
    }
}

/// The budget as a gate the test opens; counts what passes.
#[derive(Default)]
struct Budget {
    closed: std::sync::atomic::AtomicBool,
    open: Notify,
    asked: AtomicU32,
    counted: AtomicU32,
}

impl CallObserver for Budget {
    fn before_call(
        &self,
        _action: &'static str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async {
            self.asked.fetch_add(1, Ordering::SeqCst);
            while self.closed.load(Ordering::SeqCst) {
                self.open.notified().await;
            }
            Ok(())
        })
    }

    fn after_call(&self, _action: &'static str, _verdict: Verdict) {
        self.counted.fetch_add(1, Ordering::SeqCst);
    }
}

fn api(status: i64, message: &str) -> Answer {
    Answer::new(
        200,
        Some(header::HeaderValue::from_static("text/html; charset=UTF-8")),
        Bytes::from(json!({"status": status, "message": message, "details": "id-1"}).to_string()),
    )
}

fn refused() -> Answer {
    api(
        -8,
        "Authentication failed: IP address not authorized for this API key",
    )
}

fn call(label: &'static str, kind: Kind) -> Call {
    Call {
        action: Action { label, kind },
        query: vec![("action".into(), label.into())],
        form: None,
    }
}

fn send_call() -> Call {
    call("message_send", Kind::Billed)
}

fn query_call() -> Call {
    call("message_status", Kind::Query)
}

struct Rig {
    gateway: Arc<Gateway>,
    shared: Arc<Shared>,
    rechecks: mpsc::Receiver<RecheckRequest>,
    budget: Arc<Budget>,
}

fn rig(script: &Arc<Script>, token: Option<&str>, max_held: usize) -> Rig {
    let metrics = Arc::new(Metrics::new(None));
    let (shared, rechecks) = Shared::new(&[Family::V4], HOLD, metrics, None, None, Arc::default());
    shared.publish_ready(true);
    let budget = Arc::new(Budget::default());
    let settings = Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 9798)),
        token: token.map(|t| SecretString::from(t.to_owned())),
        limits: Limits {
            hold: HOLD,
            max_held,
        },
    };
    let credentials = Credentials {
        username: "account".into(),
        api_key: SecretString::from(KEY.to_owned()),
    };
    let upstream: Arc<dyn Upstream> = script.clone();
    let observer: Arc<dyn CallObserver> = budget.clone();
    let gateway = Gateway::over(
        &settings,
        upstream,
        &credentials,
        Arc::clone(&shared),
        observer,
    );
    Rig {
        gateway,
        shared,
        rechecks,
        budget,
    }
}

impl Rig {
    async fn forward(&self, call: Call) -> (Reply, Outcome) {
        let (reply, outcome, _) = self.gateway.forwarder.forward(&call).await;
        (reply, outcome)
    }

    fn status(&self) -> crate::metrics::GatewayStatus {
        self.shared.snapshot().gateway.expect("the gateway is on")
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_goes_through_at_once_and_its_answer_back_as_it_is() {
    let script = Script::new([Ok(api(1, "Message sent"))]);
    let rig = rig(&script, None, 10);
    let (reply, outcome) = rig.forward(send_call()).await;
    assert_eq!(reply, Reply::Api(api(1, "Message sent")));
    assert_eq!(outcome, Outcome::Forwarded);
    assert_eq!(
        rig.budget.asked.load(Ordering::SeqCst),
        0,
        "a send is never budgeted"
    );
    assert_eq!(rig.budget.counted.load(Ordering::SeqCst), 1);
    let status = rig.status();
    assert_eq!(status.calls["forwarded"], 1);
    assert_eq!(status.calls_by_action["message_send"]["forwarded"], 1);
    assert_eq!(status.holds, 0);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_for_the_ip_is_held_for_a_recheck_and_sent_once_more() {
    let script = Script::new([Ok(refused()), Ok(api(1, "Message sent"))]);
    let mut rig = rig(&script, None, 10);
    let shared = Arc::clone(&rig.shared);
    let call = send_call();
    let mut rechecks = std::mem::replace(&mut rig.rechecks, mpsc::channel(1).1);
    let forward = rig.forward(call);
    let control_loop = async {
        let request = rechecks.recv().await.expect("a recheck is asked for");
        assert_eq!(request.cause, Cause::Refused);
        // The loop whitelists the new address: readiness drops, then a proof, then ready.
        shared.publish_ready(false);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            shared.snapshot().gateway.expect("on").held_calls,
            1,
            "the call is held meanwhile"
        );
        shared.publish_proof();
        shared.publish_ready(true);
    };
    let ((reply, outcome), ()) = tokio::join!(forward, control_loop);
    assert_eq!(reply, Reply::Api(api(1, "Message sent")));
    assert_eq!(outcome, Outcome::HeldThenSent);
    assert_eq!(script.sends(), 2);
    let status = rig.status();
    assert_eq!(status.holds, 1);
    assert!(
        (1.5..1.6).contains(&status.hold_seconds_total),
        "{status:?}"
    );
    assert_eq!(status.held_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn a_proof_from_before_the_refusal_does_not_release_the_call() {
    let script = Script::new([Ok(refused()), Ok(api(1, "Message sent"))]);
    let rig = rig(&script, None, 10);
    rig.shared.publish_proof();
    let started = tokio::time::Instant::now();
    let shared = Arc::clone(&rig.shared);
    let release = async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        shared.publish_proof();
    };
    let ((_, outcome), ()) = tokio::join!(rig.forward(send_call()), release);
    assert_eq!(outcome, Outcome::HeldThenSent);
    assert_eq!(started.elapsed(), Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn an_address_not_verified_in_time_gets_the_apis_refusal_unchanged() {
    let script = Script::new([Ok(refused())]);
    let rig = rig(&script, None, 10);
    let started = tokio::time::Instant::now();
    let (reply, outcome) = rig.forward(send_call()).await;
    assert_eq!(started.elapsed(), HOLD);
    assert_eq!(reply, Reply::Api(refused()));
    assert_eq!(outcome, Outcome::Refused);
    assert_eq!(script.sends(), 1, "never sent again without a new proof");
}

#[tokio::test(start_paused = true)]
async fn a_refusal_that_a_proof_does_not_cure_is_sent_at_most_three_times() {
    let script = Script::new([Ok(refused()), Ok(refused()), Ok(refused()), Ok(refused())]);
    let rig = rig(&script, None, 10);
    let shared = Arc::clone(&rig.shared);
    let prove = async {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            shared.publish_proof();
        }
    };
    let ((reply, outcome), ()) = tokio::join!(rig.forward(send_call()), prove);
    assert_eq!((reply, outcome), (Reply::Api(refused()), Outcome::Refused));
    assert_eq!(script.sends(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_call_is_held_while_the_sidecar_is_not_ready_then_sent_once() {
    let script = Script::new([Ok(api(1, "Message sent"))]);
    let rig = rig(&script, None, 10);
    rig.shared.publish_ready(false);
    let shared = Arc::clone(&rig.shared);
    let ready = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(script.sends(), 0, "nothing is sent to certain failure");
        shared.publish_ready(true);
    };
    let ((_, outcome), ()) = tokio::join!(rig.forward(send_call()), ready);
    assert_eq!(outcome, Outcome::HeldThenSent);
    assert_eq!(script.sends(), 1);
    // Never ready: sent anyway when the hold runs out, once.
    rig.shared.publish_ready(false);
    let started = tokio::time::Instant::now();
    let (reply, outcome) = rig.forward(send_call()).await;
    assert_eq!(started.elapsed(), HOLD);
    assert_eq!(
        (reply, outcome),
        (Reply::Api(api(1, "Message sent")), Outcome::HeldThenSent)
    );
    assert_eq!(script.sends(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_outcome_of_a_send_is_never_sent_again() {
    let script = Script::new([Err(Failure::Unknown("connection lost".into()))]);
    let rig = rig(&script, None, 10);
    let (reply, outcome) = rig.forward(send_call()).await;
    assert_eq!(reply, Reply::Unknown("connection lost".into()));
    assert_eq!(outcome, Outcome::Unknown);
    assert_eq!(script.sends(), 1);
    assert_eq!(rig.status().calls["outcome_unknown"], 1);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_outcome_of_a_query_is_asked_again() {
    let lost = || Err(Failure::Unknown("timed out".into()));
    let script = Script::new([lost(), Ok(api(0, "OK"))]);
    let rig = rig(&script, None, 10);
    let (reply, outcome) = rig.forward(query_call()).await;
    assert_eq!(
        (reply, outcome),
        (Reply::Api(api(0, "OK")), Outcome::HeldThenSent)
    );
    assert_eq!(script.sends(), 2);
    // Three times at most.
    let script = Script::new([lost(), lost(), lost(), Ok(api(0, "OK"))]);
    let rig = self::rig(&script, None, 10);
    let (_, outcome) = rig.forward(query_call()).await;
    assert_eq!(outcome, Outcome::Unknown);
    assert_eq!(script.sends(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_send_that_never_left_is_sent_again_and_gives_up_after_the_hold() {
    let unsent = || Err(Failure::NeverLeft("connection refused".into()));
    let script = Script::new([unsent(), unsent(), Ok(api(1, "Message sent"))]);
    let rig = rig(&script, None, 10);
    let (reply, outcome) = rig.forward(send_call()).await;
    assert_eq!(
        (reply, outcome),
        (Reply::Api(api(1, "Message sent")), Outcome::HeldThenSent)
    );
    assert_eq!(script.sends(), 3);
    let script = Script::new(std::iter::repeat_with(unsent).take(1000));
    let rig = self::rig(&script, None, 10);
    let started = tokio::time::Instant::now();
    let (reply, outcome) = rig.forward(send_call()).await;
    assert!(started.elapsed() >= HOLD && started.elapsed() < HOLD + Duration::from_secs(2));
    assert!(
        matches!(&reply, Reply::NotSent { status: -16, why } if why.contains("connection refused")),
        "{reply:?}"
    );
    assert_eq!(outcome, Outcome::Refused);
}

#[tokio::test(start_paused = true)]
async fn queries_wait_for_the_budget_at_most_the_hold_and_sends_never_do() {
    let script = Script::new([]);
    let rig = rig(&script, None, 10);
    rig.budget.closed.store(true, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let (_, outcome) = rig.forward(send_call()).await;
    assert_eq!(outcome, Outcome::Forwarded);
    assert_eq!(started.elapsed(), Duration::ZERO);
    let budget = Arc::clone(&rig.budget);
    let open = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        budget.closed.store(false, Ordering::SeqCst);
        budget.open.notify_waiters();
    };
    let ((_, outcome), ()) = tokio::join!(rig.forward(query_call()), open);
    assert_eq!(outcome, Outcome::HeldThenSent);
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    rig.budget.closed.store(true, Ordering::SeqCst);
    let (reply, outcome) = rig.forward(query_call()).await;
    assert!(
        matches!(reply, Reply::NotSent { status: -4096, .. }),
        "{reply:?}"
    );
    assert_eq!(outcome, Outcome::Refused);
    assert_eq!(script.sends(), 2);
}

#[tokio::test(start_paused = true)]
async fn no_more_calls_are_held_than_allowed_and_a_stop_ends_every_hold() {
    let script = Script::new([]);
    let rig = rig(&script, None, 1);
    rig.shared.publish_ready(false);
    let gateway = Arc::clone(&rig.gateway);
    let first = tokio::spawn(async move {
        let (reply, outcome, _) = gateway.forwarder.forward(&send_call()).await;
        (reply, outcome)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rig.status().held_calls, 1);
    // The second finds the hold full: it is not held, but sent at once.
    let started = tokio::time::Instant::now();
    let (_, outcome) = rig.forward(send_call()).await;
    assert_eq!(
        (outcome, started.elapsed()),
        (Outcome::Forwarded, Duration::ZERO)
    );
    rig.gateway.stop();
    let (_, outcome) = first.await.expect("first call");
    assert_eq!(outcome, Outcome::HeldThenSent);
    assert_eq!(started.elapsed(), Duration::ZERO, "answered at the stop");
    assert_eq!(rig.status().held_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn a_call_the_app_gave_up_on_during_its_hold_is_never_sent() {
    let script = Script::new([]);
    let rig = rig(&script, None, 10);
    rig.shared.publish_ready(false);
    let gave_up = tokio::time::timeout(Duration::from_secs(2), rig.forward(send_call())).await;
    assert!(gave_up.is_err());
    assert_eq!(rig.status().held_calls, 0, "no longer counted as held");
    rig.shared.publish_ready(true);
    tokio::time::sleep(HOLD).await;
    assert_eq!(script.sends(), 0);
}

/// The router as a service, seeing callers at `peer`.
async fn call_router(rig: &Rig, peer: &str, request: Request<Body>) -> (u16, String) {
    let peer: SocketAddr = peer.parse().expect("peer");
    let mut router = Arc::clone(&rig.gateway)
        .router()
        .layer(MockConnectInfo(peer));
    let response = router.call(request).await.expect("infallible");
    let code = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (code, String::from_utf8_lossy(&body).into_owned())
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

#[tokio::test]
async fn who_may_call_and_what_reaches_the_api() {
    let script = Script::new([]);
    let rig = rig(&script, None, 10);
    let send = "/json?action=message_send&to=0722&text=hi&username=app&password=app-secret";
    // Loopback callers need no token; the app's credentials are not forwarded.
    let (code, body) = call_router(&rig, "127.0.0.1:5000", get(send)).await;
    assert_eq!((code, body.contains("\"status\":1")), (200, true), "{body}");
    let sent = crate::util::lock(&script.sent)[0].clone();
    assert!(
        !sent
            .query
            .iter()
            .any(|(k, v)| k == "username" || k == "password" || v.contains("app-secret")),
        "{sent:?}"
    );
    // Without a token, another host is refused with a sendSMS-shaped -8.
    let (code, body) = call_router(&rig, "10.1.2.3:5000", get(send)).await;
    assert_eq!(code, 403);
    let answer: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(answer["status"], -8, "{body}");
    assert_eq!(script.sends(), 1);
    // Actions that manage the key are not forwarded, from anywhere.
    let (code, body) = call_router(
        &rig,
        "127.0.0.1:5000",
        get("/json?action=token_add_ip&ipaddr=1.2.3.4"),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("token_add_ip is not forwarded"), "{body}");
    assert_eq!(script.sends(), 1);
    assert_eq!(rig.status().calls["caller_refused"], 2);
}

#[tokio::test]
async fn with_a_token_every_caller_presents_it_as_password_or_bearer() {
    let token = "gw-token-0123456789abcdef";
    let script = Script::new([]);
    let rig = rig(&script, Some(token), 10);
    let send = "/json?action=message_send&to=0722&text=hi";
    for (peer, uri, bearer, want) in [
        ("127.0.0.1:1", send.to_owned(), None, 403),
        ("10.1.2.3:1", send.to_owned(), None, 403),
        (
            "10.1.2.3:1",
            format!("{send}&password=wrong-token-0123456789"),
            None,
            403,
        ),
        (
            "10.1.2.3:1",
            format!("{send}&username=x&password={token}"),
            None,
            200,
        ),
        (
            "10.1.2.3:1",
            send.to_owned(),
            Some(format!("Bearer {token}")),
            200,
        ),
        (
            "[::1]:1",
            send.to_owned(),
            Some("Bearer nope".to_owned()),
            403,
        ),
    ] {
        let mut request = get(&uri);
        if let Some(bearer) = bearer {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, bearer.parse().expect("header"));
        }
        let (code, body) = call_router(&rig, peer, request).await;
        assert_eq!(code, want, "{peer} {uri}: {body}");
        assert!(!body.contains(token), "{body}");
    }
    assert_eq!(script.sends(), 2);
    for sent in crate::util::lock(&script.sent).iter() {
        assert!(
            !sent.query.iter().any(|(_, v)| v == token),
            "the token went to the API"
        );
    }
}

#[tokio::test]
async fn a_post_form_is_forwarded_as_a_form_and_other_bodies_are_refused() {
    let script = Script::new([]);
    let rig = rig(&script, None, 10);
    let form = Request::post("/json?action=message_send")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("to=0722&text=hello+there&password=app-secret"))
        .expect("request");
    let (code, _) = call_router(&rig, "127.0.0.1:1", form).await;
    assert_eq!(code, 200);
    let sent = crate::util::lock(&script.sent)[0].clone();
    assert_eq!(
        sent.form,
        Some(vec![
            ("to".to_owned(), "0722".to_owned()),
            ("text".to_owned(), "hello there".to_owned())
        ])
    );
    let json_body = Request::post("/json")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .expect("request");
    assert_eq!(call_router(&rig, "127.0.0.1:1", json_body).await.0, 415);
    let huge = Request::post("/json")
        .body(Body::from(vec![b'a'; MAX_REQUEST_BYTES + 1]))
        .expect("request");
    assert_eq!(call_router(&rig, "127.0.0.1:1", huge).await.0, 413);
    assert_eq!(script.sends(), 1);
}

#[tokio::test]
async fn the_key_never_goes_back_to_the_app() {
    let echo = Answer::new(
        200,
        Some(header::HeaderValue::from_static("application/json")),
        Bytes::from(format!(
            r#"{{"status":0,"message":"OK","details":{{"key":"{KEY}","url":"?password={}"}}}}"#,
            url::form_urlencoded::byte_serialize(KEY.as_bytes()).collect::<String>()
        )),
    );
    let script = Script::new([Ok(echo)]);
    let rig = rig(&script, None, 10);
    let (code, body) = call_router(&rig, "127.0.0.1:1", get("/json?action=user_get_info")).await;
    assert_eq!(code, 200);
    assert!(!body.contains(KEY), "{body}");
    assert_eq!(body.matches("[REDACTED]").count(), 2, "{body}");
    let text = rig.shared.metrics().encode()
        + &serde_json::to_string(&rig.shared.snapshot()).expect("json");
    assert!(!text.contains(KEY));
}

#[tokio::test]
async fn an_unknown_outcome_is_a_502_saying_so() {
    let script = Script::new([Err(Failure::Unknown("the connection was lost".into()))]);
    let rig = rig(&script, None, 10);
    let (code, body) = call_router(
        &rig,
        "127.0.0.1:1",
        get("/json?action=message_send&to=1&text=x"),
    )
    .await;
    assert_eq!(code, 502);
    let answer: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(answer["status"].as_i64().is_some_and(|s| s < 0), "{body}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("outcome is unknown")),
        "{body}"
    );
    assert_eq!(answer["details"]["gateway"], "outcome_unknown");
}
