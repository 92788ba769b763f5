//! A scripted Kubernetes API server for operator tests (kube's `tower-test` pattern): the code
//! under test gets a `kube::Client` over an in-memory service; the test takes each request in
//! turn, checks it and answers it.

#![allow(dead_code)]

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

/// How long a test waits for the next request before failing: generous for a loaded CI
/// machine, short enough to fail fast when the code under test stops making requests.
pub const REQUEST_WAIT: Duration = Duration::from_secs(10);

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The test's side of the mock API server.
pub struct ApiServer {
    handle: Handle,
}

/// One request received by the mock API server.
pub struct Call {
    pub method: Method,
    /// Path and query, e.g. `/api/v1/namespaces/x/secrets/y?fieldManager=imagegate`.
    pub uri: String,
    pub body: Value,
    respond: tower_test::mock::SendResponse<Response<Body>>,
}

impl Call {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }

    /// The query string (empty when none).
    pub fn query(&self) -> &str {
        self.uri.split_once('?').map(|(_, q)| q).unwrap_or_default()
    }

    /// The value of one query parameter, percent-decoded; `None` when absent.
    pub fn param(&self, name: &str) -> Option<String> {
        self.query()
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    }

    /// Whether this is a watch request (`?watch=true`), as opposed to a list or a get.
    pub fn is_watch(&self) -> bool {
        self.param("watch").as_deref() == Some("true")
    }

    /// Asserts the method and path.
    pub fn expect(self, method: Method, path: &str) -> Call {
        assert_eq!(
            (self.method.as_str(), self.path()),
            (method.as_str(), path),
            "unexpected request {} {} with body {}",
            self.method,
            self.uri,
            self.body
        );
        self
    }

    /// Answers with `status` and a JSON body.
    pub fn respond(self, status: u16, body: Value) {
        let response = Response::builder()
            .status(StatusCode::from_u16(status).expect("valid status"))
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).expect("JSON")))
            .expect("response");
        self.respond.send_response(response);
    }

    /// Answers 200 with `body`.
    pub fn ok(self, body: Value) {
        self.respond(200, body)
    }

    /// Answers a watch request with these events (`{"type": …, "object": …}`), one JSON
    /// document a line as the API server streams them; the watch then ends, as when the API
    /// server closes it.
    pub fn watch_events(self, events: &[Value]) {
        let mut body = Vec::new();
        for e in events {
            serde_json::to_writer(&mut body, e).expect("JSON");
            body.push(b'\n');
        }
        let response = Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("response");
        self.respond.send_response(response);
    }

    /// Answers with a `Status` error of `code` and `reason`.
    pub fn error(self, code: u16, reason: &str) {
        self.respond(
            code,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": format!("{reason} (mock)"), "reason": reason, "code": code}),
        )
    }

    /// Answers 200 with the request's own body, as the API server does for a write, after
    /// setting `resourceVersion`.
    pub fn echo(self, resource_version: &str) {
        let mut body = self.body.clone();
        body["metadata"]["resourceVersion"] = json!(resource_version);
        self.ok(body)
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ASCII");
                out.push(u8::from_str_radix(hex, 16).expect("percent escape"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("UTF-8 query")
}

/// A client over a mock service, and the test's side of it.
pub fn mock() -> (kube::Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), ApiServer { handle })
}

impl ApiServer {
    /// The next request; fails the test when none comes within [`REQUEST_WAIT`].
    pub async fn next(&mut self) -> Call {
        match self.next_opt(REQUEST_WAIT).await {
            Some(call) => call,
            None => panic!("expected another request to the API server"),
        }
    }

    /// The next request, or `None` when the client is dropped or nothing comes within `wait`.
    pub async fn next_opt(&mut self, wait: Duration) -> Option<Call> {
        let (request, respond) = tokio::time::timeout(wait, self.handle.next_request())
            .await
            .ok()??;
        let method = request.method().clone();
        let uri = request
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request body is JSON")
        };
        Some(Call {
            method,
            uri,
            body,
            respond,
        })
    }

    /// Asserts that no further request comes (the client was dropped or stayed quiet).
    pub async fn no_more(&mut self) {
        if let Some(call) = self.next_opt(Duration::from_millis(200)).await {
            panic!(
                "unexpected request {} {} with body {}",
                call.method, call.uri, call.body
            );
        }
    }
}

/// Runs `fut` on its own task, so the test can answer its requests; `join` gets the result.
pub fn spawn<T: Send + 'static>(
    fut: impl Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::spawn(fut)
}

/// Waits for a spawned task, failing the test when it does not finish in time.
pub async fn join<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(REQUEST_WAIT, task)
        .await
        .expect("the task finished in time")
        .expect("the task did not panic")
}
