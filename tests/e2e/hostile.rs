//! Hostile input, generated with proptest: valid bodies mutated (fields
//! dropped, duplicated, renamed, given wrong types, huge numbers, deep nesting,
//! long strings), invalid UTF-8 and NUL bytes spliced in, bodies above the
//! limits, to every write endpoint and form of one running server, and to the
//! handheld page of one running agent daemon.
//!
//! Properties: never a 5xx; the server (or daemon) still answers after each
//! case; API errors keep the JSON error shape; a refused request stores
//! nothing (the observable state before and after is the same), and the
//! handheld's outbox does not grow from a refused form.
//!
//! 64 cases per endpoint by default, so that the file stays well under a minute
//! in CI; `HANDOVER_FUZZ_CASES` runs deeper, `PROPTEST_RNG_SEED` replays a run.

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    time::Instant,
};

use proptest::{
    collection::vec,
    prelude::*,
    sample::select,
    test_runner::{Config, TestCaseError, TestRunner},
};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{
    agent::busy_courier,
    authz::{page_session, NO_LOGIN_LIMITS},
    helpers::{field_value, AgentDaemon, Sandbox, TestServer, DEMO_PASSWORD},
};

fn cases() -> u32 {
    std::env::var("HANDOVER_FUZZ_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(64)
}

fn runner() -> TestRunner {
    // No regression files: a failure prints its minimal input, and the seed
    // (PROPTEST_RNG_SEED) replays the run.
    TestRunner::new(Config { cases: cases(), max_shrink_iters: 64, failure_persistence: None, ..Config::default() })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("a tokio runtime")
}

/// A document being broken: unlike `serde_json::Value`, it holds duplicate
/// keys, numbers out of any range and raw text.
#[derive(Debug, Clone)]
enum Doc {
    /// Written as it is: numbers, literals, broken escapes.
    Raw(String),
    Text(String),
    /// A string of this many `x` (kept short in failure reports).
    Long(usize),
    /// Nested arrays (or objects `{"a":...}`) this deep.
    Deep {
        objects: bool,
        depth: usize,
    },
    List(Vec<Doc>),
    Object(Vec<(String, Doc)>),
}

impl Doc {
    fn from_value(value: &Value) -> Doc {
        match value {
            Value::String(text) => Doc::Text(text.clone()),
            Value::Array(items) => Doc::List(items.iter().map(Doc::from_value).collect()),
            Value::Object(fields) => {
                Doc::Object(fields.iter().map(|(name, value)| (name.clone(), Doc::from_value(value))).collect())
            }
            scalar => Doc::Raw(scalar.to_string()),
        }
    }

    fn json(&self, out: &mut Vec<u8>) {
        match self {
            Doc::Raw(raw) => out.extend_from_slice(raw.as_bytes()),
            Doc::Text(text) => out.extend(serde_json::to_vec(text).expect("a string serialises")),
            Doc::Long(length) => out.extend([&b"\""[..], &vec![b'x'; *length], b"\""].concat()),
            Doc::Deep { objects: false, depth } => out.extend([vec![b'['; *depth], vec![b']'; *depth]].concat()),
            Doc::Deep { objects: true, depth } => {
                out.extend([b"{\"a\":".repeat(*depth), b"1".to_vec(), vec![b'}'; *depth]].concat());
            }
            Doc::List(items) => {
                out.push(b'[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    item.json(out);
                }
                out.push(b']');
            }
            Doc::Object(fields) => {
                out.push(b'{');
                for (index, (name, value)) in fields.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    Doc::Text(name.clone()).json(out);
                    out.push(b':');
                    value.json(out);
                }
                out.push(b'}');
            }
        }
    }

    fn json_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.json(&mut out);
        out
    }

    /// As an `application/x-www-form-urlencoded` body; a form field's value is
    /// its text, or the JSON of anything else.
    fn form_bytes(&self) -> Vec<u8> {
        let Doc::Object(fields) = self else { return self.json_bytes() };
        let value = |doc: &Doc| match doc {
            Doc::Text(text) => text.as_bytes().to_vec(),
            Doc::Long(length) => vec![b'x'; *length],
            other => other.json_bytes(),
        };
        let pairs: Vec<String> =
            fields.iter().map(|(name, doc)| format!("{}={}", percent(name.as_bytes()), percent(&value(doc)))).collect();
        pairs.join("&").into_bytes()
    }

    /// Puts `value` wherever the text `placeholder` stands.
    fn fill(&mut self, placeholder: &str, value: &str) {
        match self {
            Doc::Text(text) if text == placeholder => *text = value.to_owned(),
            Doc::List(items) => items.iter_mut().for_each(|item| item.fill(placeholder, value)),
            Doc::Object(fields) => fields.iter_mut().for_each(|(_, doc)| doc.fill(placeholder, value)),
            _ => {}
        }
    }

    /// Drops the fields named `name`, at the top.
    fn without(&mut self, name: &str) {
        if let Doc::Object(fields) = self {
            fields.retain(|(field, _)| field != name);
        }
    }

    /// Applies `edit` at the container that `path` leads to (each step picks a
    /// child by index, modulo the number of children).
    fn edit(&mut self, path: &[usize], edit: &Edit) {
        let (here, deeper) = path.split_first().map_or((0, &[][..]), |(index, rest)| (*index, rest));
        match self {
            Doc::Object(fields) if !fields.is_empty() => {
                let index = here % fields.len();
                if !deeper.is_empty() && matches!(fields[index].1, Doc::Object(_) | Doc::List(_)) {
                    return fields[index].1.edit(deeper, edit);
                }
                match edit {
                    Edit::Drop => drop(fields.remove(index)),
                    Edit::Duplicate => fields.push(fields[index].clone()),
                    Edit::Rename(name) => fields[index].0.clone_from(name),
                    Edit::Replace(value) => fields[index].1 = value.clone(),
                    Edit::Add(name, value) => fields.push((name.clone(), value.clone())),
                }
            }
            Doc::List(items) if !items.is_empty() => {
                let index = here % items.len();
                if !deeper.is_empty() && matches!(items[index], Doc::Object(_) | Doc::List(_)) {
                    return items[index].edit(deeper, edit);
                }
                match edit {
                    Edit::Drop => drop(items.remove(index)),
                    Edit::Duplicate => items.push(items[index].clone()),
                    Edit::Rename(name) => items[index] = Doc::Text(name.clone()),
                    Edit::Replace(value) => items[index] = value.clone(),
                    Edit::Add(_, value) => items.push(value.clone()),
                }
            }
            Doc::Object(fields) => {
                if let Edit::Add(name, value) = edit {
                    fields.push((name.clone(), value.clone()));
                }
            }
            other => {
                if let Edit::Replace(value) | Edit::Add(_, value) = edit {
                    *other = value.clone();
                }
            }
        }
    }
}

/// Percent-encodes every byte but the unreserved ones.
fn percent(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(byte).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Edit {
    Drop,
    Duplicate,
    Rename(String),
    Replace(Doc),
    Add(String, Doc),
}

/// What happens to the bytes once the document is written.
#[derive(Debug, Clone)]
enum Bytes {
    Keep,
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Overwrite(usize, u8),
    /// Padded to one byte above the endpoint's limit.
    Oversize,
    Garbage(Vec<u8>),
}

impl Bytes {
    fn apply(&self, mut body: Vec<u8>, limit: usize) -> Vec<u8> {
        let at = |index: usize, len: usize| index % (len + 1);
        match self {
            Bytes::Keep => {}
            Bytes::Truncate(index) => body.truncate(at(*index, body.len())),
            Bytes::Insert(index, bytes) => {
                let index = at(*index, body.len());
                body.splice(index..index, bytes.iter().copied());
            }
            Bytes::Overwrite(index, byte) => {
                let index = index % body.len().max(1);
                if let Some(slot) = body.get_mut(index) {
                    *slot = *byte;
                }
            }
            Bytes::Oversize => body.resize(body.len().max(limit + 1), b' '),
            Bytes::Garbage(bytes) => body.clone_from(bytes),
        }
        body
    }
}

/// Who the request claims to come from.
#[derive(Debug, Clone, Copy)]
enum Credential {
    /// The token (or form token, or session) the endpoint serves.
    Right,
    Missing,
    /// A real one that is not the right one: another role, another session's token.
    Wrong,
    Garbage,
}

/// The id in the path.
#[derive(Debug, Clone)]
enum Id {
    Real,
    Suffixed(String),
    Other(String),
    Raw(&'static str),
    Long,
}

/// One hostile request: where, how it is broken, as whom.
#[derive(Debug, Clone)]
struct Case {
    id: Id,
    /// A random document in place of the valid body.
    replacement: Option<Doc>,
    edits: Vec<(Vec<usize>, Edit)>,
    bytes: Bytes,
    /// `None`: the endpoint's own; `Some("")`: no header.
    content_type: Option<&'static str>,
    credential: Credential,
}

const LITERALS: &[&str] = &[
    "1e308",
    "-1e308",
    "1e309",
    "18446744073709551616",
    "18446744073709551615",
    "4294967296",
    "4294967295",
    "9223372036854775808",
    "-9223372036854775809",
    "-1",
    "0",
    "-0",
    "2.5",
    "1e-400",
    "1.0",
    "NaN",
    "Infinity",
    "true",
    "null",
    "\"\"",
    "[]",
    "{}",
    "\"\\ud800\"",
    "\"\\u0000\"",
    "01",
    "+1",
    "0x10",
    "\"\\x41\"",
];

const TEXTS: &[&str] = &[
    "",
    " ",
    "\0",
    "C1\0",
    "\u{202e}1C",
    " C1 ",
    "c1",
    "C2",
    "../../etc/passwd",
    "%00",
    "R-000001",
    "D-000001",
    "D-000001-L2",
    "B1",
    "TC-050",
    "exp2",
    "svc1",
    "<script>alert(1)</script>",
    "' OR '1'='1",
    "${jndi:ldap://x}",
    "\u{feff}TC-100",
    "ＴＣ-100",
    "\r\nX-Injected: 1",
    "customer_absent",
    "other",
    "delivered",
    "failed",
    "2030-02-30T25:61:00Z",
    "data:image/png;base64,",
];

/// Lengths around the limits: recipient 200, note 1,000, password 1,024, bodies 64 KiB.
const LENGTHS: &[usize] = &[200, 201, 1_000, 1_001, 1_024, 1_025, 60_000, 70_000, 300_000];

/// Nesting just past serde_json's limit (128), and far past it.
const DEPTHS: &[usize] = &[129, 10_000];

const NAMES: &[&str] = &[
    "username",
    "password",
    "device_id",
    "refresh_token",
    "customer_id",
    "item_id",
    "quantity",
    "assignee",
    "confirmations",
    "confirmation_id",
    "delivery_id",
    "version",
    "outcome",
    "reason",
    "note",
    "recipient",
    "empties",
    "empties_collected",
    "captured_at",
    "position",
    "signature",
    "nodes",
    "stock",
    "accounts",
    "csrf",
    "next",
    "token",
    "__proto__",
    "",
];

/// Bytes spliced into a body: invalid UTF-8 (a lone continuation byte, an
/// overlong NUL, a UTF-16 surrogate), NUL, broken escapes and percent codes.
const SPLICES: &[&[u8]] = &[
    b"\xff",
    b"\xfe\xff",
    b"\x80",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\x00",
    b"\x00\x00\x00\x00",
    b"%",
    b"%ZZ",
    b"%FF",
    b"%00",
    b"&&==&",
    b"\\",
    b"\"",
    b"\\u",
    b"}",
    b"]",
    b",",
];

const CONTENT_TYPES: &[&str] = &[
    "",
    "text/plain",
    "application/json",
    "application/x-www-form-urlencoded",
    "application/json; charset=utf-16",
    "application/problem+json",
    "multipart/form-data; boundary=zz",
    "*/*",
];

const RAW_IDS: &[&str] = &[
    "%00",
    "%FF%FE",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e",
    "a%2Fb",
    "D-000001%00",
    "%C0%AE",
    "R-000001",
    "D-000001",
    "D-000001-L2",
    "B1",
    "%20",
    "x;y",
    "%E2%80%AE",
];

fn name() -> impl Strategy<Value = String> {
    prop_oneof![3 => select(NAMES).prop_map(str::to_owned), 2 => "[a-z_]{0,12}", 1 => any::<String>()]
}

fn value() -> impl Strategy<Value = Doc> {
    let scalar = prop_oneof![
        5 => select(LITERALS).prop_map(|raw| Doc::Raw(raw.to_owned())),
        4 => select(TEXTS).prop_map(|text| Doc::Text(text.to_owned())),
        2 => any::<String>().prop_map(Doc::Text),
        1 => select(LENGTHS).prop_map(Doc::Long),
        2 => any::<i64>().prop_map(|number| Doc::Raw(number.to_string())),
        1 => any::<u64>().prop_map(|number| Doc::Raw(number.to_string())),
        1 => any::<f64>().prop_map(|number| Doc::Raw(format!("{number:e}"))),
        1 => (any::<bool>(), select(DEPTHS)).prop_map(|(objects, depth)| Doc::Deep { objects, depth }),
    ];
    scalar.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![vec(inner.clone(), 0..3).prop_map(Doc::List), vec((name(), inner), 0..3).prop_map(Doc::Object)]
    })
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        2 => Just(Edit::Drop),
        1 => Just(Edit::Duplicate),
        1 => name().prop_map(Edit::Rename),
        4 => value().prop_map(Edit::Replace),
        1 => (name(), value()).prop_map(|(name, value)| Edit::Add(name, value)),
    ]
}

fn bytes() -> impl Strategy<Value = Bytes> {
    let splice = prop_oneof![select(SPLICES).prop_map(<[u8]>::to_vec), vec(any::<u8>(), 1..8)];
    prop_oneof![
        12 => Just(Bytes::Keep),
        1 => any::<usize>().prop_map(Bytes::Truncate),
        3 => (any::<usize>(), splice).prop_map(|(at, bytes)| Bytes::Insert(at, bytes)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Bytes::Overwrite(at, byte)),
        1 => Just(Bytes::Oversize),
        1 => vec(any::<u8>(), 0..256).prop_map(Bytes::Garbage),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let id = prop_oneof![
        5 => Just(Id::Real),
        1 => "[ -~]{1,3}".prop_map(Id::Suffixed),
        2 => any::<String>().prop_map(Id::Other),
        2 => select(RAW_IDS).prop_map(Id::Raw),
        1 => Just(Id::Long),
    ];
    let content_type = prop_oneof![8 => Just(None), 1 => select(CONTENT_TYPES).prop_map(Some)];
    let credential = prop_oneof![
        8 => Just(Credential::Right),
        1 => Just(Credential::Missing),
        1 => Just(Credential::Wrong),
        1 => Just(Credential::Garbage),
    ];
    let replacement = proptest::option::weighted(0.1, value());
    (id, replacement, vec((vec(any::<usize>(), 0..4), edit()), 0..4), bytes(), content_type, credential).prop_map(
        |(id, replacement, edits, bytes, content_type, credential)| Case {
            id,
            replacement,
            edits,
            bytes,
            content_type,
            credential,
        },
    )
}

impl Case {
    /// The path with the case's id in place of `{id}`.
    fn path(&self, template: &str, real: &str) -> String {
        let id = match &self.id {
            Id::Real => real.to_owned(),
            Id::Suffixed(suffix) => format!("{real}{}", percent(suffix.as_bytes())),
            Id::Other(text) => percent(text.as_bytes()),
            Id::Raw(raw) => (*raw).to_owned(),
            Id::Long => "D".repeat(5_000),
        };
        template.replace("{id}", &id)
    }

    /// The valid `body` (or the random one), edited, written as JSON or as a
    /// form, then broken.
    fn body(&self, doc: Doc, form: bool, limit: usize) -> Vec<u8> {
        let mut doc = self.replacement.clone().unwrap_or(doc);
        for (path, edit) in &self.edits {
            doc.edit(path, edit);
        }
        let written = if form { doc.form_bytes() } else { doc.json_bytes() };
        self.bytes.apply(written, limit)
    }
}

/// A write endpoint or form of the server, with a valid body to start from.
struct Target {
    name: &'static str,
    /// With `{id}` where the path names an object.
    path: &'static str,
    real_id: String,
    body: Value,
    kind: Kind,
    limit: usize,
}

enum Kind {
    /// A JSON endpoint; the bearer token it serves (none for the public ones).
    Api(Option<String>),
    /// `POST /login`: a fresh page session per case, its CSRF token at `{csrf}`.
    LoginForm,
    /// `POST /order` in cust1's page session.
    OrderForm,
}

const JSON_LIMIT: usize = 64 * 1024;
const FORM_LIMIT: usize = 16 * 1024;

/// What the test reads, as the dispatcher, to tell whether anything was stored.
const PROBES: &[&str] = &[
    "/api/v1/receipts?limit=500",
    "/api/v1/deliveries?limit=500",
    "/api/v1/orders",
    "/api/v1/stock/audit",
    "/api/v1/nodes/B1/stock",
    "/api/v1/nodes/B3/stock",
    "/api/v1/customers/C1",
    "/api/v1/customers/C2",
    "/api/v1/nodes/FZ1/stock",
    "/api/v1/customers/FZC",
    // The dispatcher's dashboard: rejected confirmations, each handheld's last
    // sync, the stock of every node (read in the dispatcher's page session).
    "/dashboard",
];

/// One server under fire, and the figures of the run.
struct Fuzz<'a> {
    server: &'a TestServer,
    sandbox: &'a Sandbox,
    dispatcher: String,
    /// The dispatcher's page session, for the dashboard.
    watcher: reqwest::Client,
    /// Sent as the wrong credential: a real token of another role.
    stranger: String,
    /// cust1's page session and its CSRF token.
    orderer: reqwest::Client,
    order_csrf: String,
    snapshot: RefCell<Vec<(StatusCode, Value)>>,
    hostile: Cell<u64>,
    requests: Cell<u64>,
    server_errors: Cell<u64>,
    closed: Cell<u64>,
    /// How each endpoint answered, by status (0: closed unanswered).
    answers: RefCell<BTreeMap<&'static str, BTreeMap<u16, u64>>>,
}

impl Fuzz<'_> {
    async fn snapshot(&self) -> Vec<(StatusCode, Value)> {
        let reads = PROBES.iter().map(|path| async move {
            if path.starts_with("/api/") {
                return self.server.get(path, Some(&self.dispatcher)).await;
            }
            let answer = self.watcher.get(format!("{}{path}", self.server.url)).send().await.expect("the page");
            (answer.status(), Value::String(answer.text().await.expect("html")))
        });
        let state = futures::future::join_all(reads).await;
        self.count(state.iter().map(|(status, _)| *status));
        state
    }

    fn count(&self, statuses: impl Iterator<Item = StatusCode>) {
        for status in statuses {
            self.requests.set(self.requests.get() + 1);
            if status.is_server_error() {
                self.server_errors.set(self.server_errors.get() + 1);
            }
        }
    }

    /// Sends one hostile request and checks every property.
    async fn check(&self, target: &Target, case: &Case) -> Result<(), TestCaseError> {
        let url = format!("{}{}", self.server.url, case.path(target.path, &target.real_id));
        let mut doc = Doc::from_value(&target.body);
        let (client, mut headers) = match &target.kind {
            Kind::Api(token) => {
                let token = match case.credential {
                    Credential::Right => token.clone(),
                    Credential::Missing => None,
                    Credential::Wrong => Some(self.stranger.clone()),
                    Credential::Garbage => Some("not.a.token".to_owned()),
                };
                let bearer = token.map(|token| ("authorization", format!("Bearer {token}")));
                (self.server.client.clone(), bearer.into_iter().collect::<Vec<_>>())
            }
            Kind::LoginForm => {
                let client = self.server.page_client(self.sandbox);
                if !matches!(case.credential, Credential::Missing) {
                    let form = client.get(format!("{}/login", self.server.url)).send().await;
                    let csrf = match form {
                        Ok(answer) => field_value(&answer.text().await.unwrap_or_default(), "csrf"),
                        Err(err) => return Err(TestCaseError::fail(format!("GET /login: {err}"))),
                    };
                    let csrf = if matches!(case.credential, Credential::Right) { csrf } else { "forged".into() };
                    doc.fill("{csrf}", &csrf);
                }
                (client, Vec::new())
            }
            Kind::OrderForm => match case.credential {
                Credential::Right => {
                    doc.fill("{csrf}", &self.order_csrf);
                    (self.orderer.clone(), Vec::new())
                }
                Credential::Missing => (self.server.page_client(self.sandbox), Vec::new()),
                Credential::Wrong | Credential::Garbage => {
                    doc.fill("{csrf}", "forged");
                    (self.orderer.clone(), Vec::new())
                }
            },
        };
        let api = matches!(target.kind, Kind::Api(_));
        let body = case.body(doc, !api, target.limit);
        let natural = if api { "application/json" } else { "application/x-www-form-urlencoded" };
        match case.content_type.unwrap_or(natural) {
            "" => {}
            content_type => headers.push(("content-type", content_type.to_owned())),
        }
        let oversized = body.len() > target.limit;
        let mut request = client.post(&url).body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        self.hostile.set(self.hostile.get() + 1);
        let answer = match request.send().await {
            Ok(answer) => Some(answer),
            // Closing the connection on a body above the limit is a refusal too.
            Err(_) if oversized => None,
            Err(err) => return Err(TestCaseError::fail(format!("no answer: {err}"))),
        };
        let (status, content_type, text) = match answer {
            Some(answer) => {
                let status = answer.status();
                let content_type = answer
                    .headers()
                    .get("content-type")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                (Some(status), content_type, answer.text().await.unwrap_or_default())
            }
            None => {
                self.closed.set(self.closed.get() + 1);
                (None, String::new(), String::new())
            }
        };
        self.count(status.into_iter());
        let code = status.map_or(0, |status| status.as_u16());
        *self.answers.borrow_mut().entry(target.name).or_default().entry(code).or_default() += 1;
        if let Some(status) = status {
            prop_assert!(!status.is_server_error(), "{status} to {url}: {text}");
        }
        let (health, body) = self.server.get("/healthz", None).await;
        self.count(std::iter::once(health));
        prop_assert_eq!((health, body), (StatusCode::OK, json!({"status": "ok"})), "the server is down");

        let refused = status.is_none_or(|status| status.is_client_error());
        if let Some(status) = status.filter(|status| status.is_client_error()) {
            if api {
                let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                prop_assert!(
                    error["error"]["code"].is_string() && error["error"]["message"].is_string(),
                    "{status} without the JSON error shape ({content_type}): {text}"
                );
            } else {
                prop_assert!(content_type.starts_with("text/html"), "{status} is not a page ({content_type}): {text}");
            }
        }
        let after = self.snapshot().await;
        if refused {
            let before = self.snapshot.borrow().clone();
            let changed: Vec<String> = PROBES
                .iter()
                .zip(before.iter().zip(&after))
                .filter(|(_, (before, after))| before != after)
                .map(|(probe, (before, after))| {
                    let short = |value: &Value| value.to_string().chars().take(400).collect::<String>();
                    format!("{probe}: {} {} -> {} {}", before.0, short(&before.1), after.0, short(&after.1))
                })
                .collect();
            prop_assert!(changed.is_empty(), "{status:?} to {url}, yet the state changed: {changed:?}");
        } else {
            // Accepted: what it changed is the new state, once planned.
            self.server.plan(&self.dispatcher).await;
            self.count(std::iter::once(StatusCode::OK));
            *self.snapshot.borrow_mut() = self.snapshot().await;
        }
        Ok(())
    }
}

/// The demo network under way: drafts, deliveries of each kind, a transfer
/// leg. Returns the targets, each with a valid body that the cases break.
async fn targets(server: &TestServer, tokens: &Tokens) -> Vec<Target> {
    let disp = &tokens.disp;
    for (customer, item, quantity) in
        [("C1", "TC-100", 1), ("C1", "TC-100", 1), ("C1", "TC-100", 1), ("C2", "TC-100", 11)]
    {
        server.confirm_order(disp, customer, item, quantity).await;
    }
    server.plan(disp).await;
    // D-000002 is exp2's, D-000003 exp1's, D-000004 comes from the master warehouse.
    let (_, mine) = server.get("/api/v1/deliveries/D-000003", Some(&tokens.exp1)).await;
    let version = mine["version"].as_u64().expect("exp1 holds D-000003");
    let mut drafts = Vec::new();
    for _ in 0..2 {
        let body = json!({"customer_id": "C1", "item_id": "TC-100", "quantity": 1});
        let (status, draft) = server.post("/api/v1/orders", &body, Some(&tokens.cust1)).await;
        assert_eq!(status, StatusCode::CREATED, "{draft}");
        drafts.push(draft["order_id"].as_str().expect("an order id").to_owned());
    }
    let api = |name, path, real_id: &str, body, token: Option<&String>| Target {
        name,
        path,
        real_id: real_id.to_owned(),
        body,
        kind: Kind::Api(token.cloned()),
        limit: JSON_LIMIT,
    };
    let confirmation = json!({
        "confirmation_id": "0195c000-0000-7000-8000-000000000001", "delivery_id": "D-000003", "version": version,
        "outcome": "delivered", "quantity": 1, "recipient": "Ms Front", "empties_collected": 1,
        "note": "left at the desk", "captured_at": "2030-01-01T09:00:00Z",
        "position": {"lat": 48.85, "lon": 2.35, "accuracy_m": 5.0},
        "signature": "data:image/png;base64,iVBORw0KGgo=", "photo_digest": "ab".repeat(32)
    });
    let network = json!({
        "nodes": [{"id": "FZ1", "kind": "branch_warehouse", "name": "Fuzz branch"}],
        "items": [{"id": "FZ-1", "name": "Fuzz toner", "collectable": true, "max_per_order": 5, "discontinued": false}],
        "stock": [{"node_id": "FZ1", "item_id": "FZ-1", "quantity": 3}],
        "customers": [{"id": "FZC", "name": "Fuzz office", "branch_1": "FZ1", "branch_2": "B1", "seller_id": "S1"}],
        "accounts": [{"username": "fzexp", "password": "fuzz-password", "role": "expediter", "node_id": "FZ1"}]
    });
    let login = json!({"username": "cust3", "password": DEMO_PASSWORD, "device_id": "fuzz-login"});
    vec![
        api("login", "/api/v1/auth/login", "", login, None),
        api("refresh", "/api/v1/auth/refresh", "", json!({"refresh_token": tokens.refresh[0]}), None),
        api("logout", "/api/v1/auth/logout", "", json!({"refresh_token": tokens.refresh[1]}), None),
        api(
            "orders",
            "/api/v1/orders",
            "",
            json!({"customer_id": "C1", "item_id": "TC-100", "quantity": 1}),
            Some(&tokens.cust1),
        ),
        api("confirm", "/api/v1/orders/{id}/confirm", &drafts[0], json!({}), Some(&tokens.cust1)),
        api("cancel", "/api/v1/orders/{id}/cancel", &drafts[1], json!({}), Some(&tokens.cust1)),
        api("shipments/run", "/api/v1/shipments/run", "", json!({}), Some(disp)),
        api("goods receipt", "/api/v1/nodes/{id}/stock", "B3", json!({"item_id": "DR-300", "quantity": 1}), Some(disp)),
        api("assign", "/api/v1/deliveries/{id}/assign", "D-000002", json!({"assignee": "exp2"}), Some(disp)),
        api("issue", "/api/v1/legs/{id}/issue", "D-000004-L1", json!({}), Some(disp)),
        Target {
            limit: 16 * 1024 * 1024,
            ..api(
                "sync",
                "/api/v1/sync/confirmations",
                "",
                json!({"device_id": "fuzz-exp1", "confirmations": [confirmation], "queued": 1}),
                Some(&tokens.exp1),
            )
        },
        Target { limit: 8 * 1024 * 1024, ..api("network", "/api/v1/admin/network", "", network, Some(&tokens.admin)) },
        api("revoke", "/api/v1/admin/devices/{id}/revoke", "fuzz-victim", json!({}), Some(&tokens.admin)),
        Target {
            name: "POST /login",
            path: "/login",
            real_id: String::new(),
            body: json!({"csrf": "{csrf}", "username": "cust3", "password": DEMO_PASSWORD, "next": "/order"}),
            kind: Kind::LoginForm,
            limit: FORM_LIMIT,
        },
        Target {
            name: "POST /order",
            path: "/order",
            real_id: String::new(),
            body: json!({"csrf": "{csrf}", "item_id": "TC-100", "quantity": "1"}),
            kind: Kind::OrderForm,
            limit: FORM_LIMIT,
        },
    ]
}

struct Tokens {
    admin: String,
    disp: String,
    cust1: String,
    exp1: String,
    cust2: String,
    /// Refresh tokens of cust2's sessions: the one the refresh cases rotate,
    /// the one the logout cases end, the one on the device the revoke cases cut off.
    refresh: Vec<String>,
}

async fn tokens(server: &TestServer) -> Tokens {
    let token = |username: &'static str| async move {
        server.login(username, DEMO_PASSWORD, Some(&format!("fuzz-{username}"))).await.access_token
    };
    let mut refresh = Vec::new();
    for device in ["fuzz-refresh", "fuzz-logout", "fuzz-victim"] {
        refresh.push(server.login("cust2", DEMO_PASSWORD, Some(device)).await.refresh_token);
    }
    Tokens {
        admin: token("admin").await,
        disp: token("disp").await,
        cust1: token("cust1").await,
        exp1: token("exp1").await,
        cust2: token("cust2").await,
        refresh,
    }
}

#[test]
fn hostile_bodies_to_every_write_endpoint_never_break_the_server_nor_store_anything() {
    let started = Instant::now();
    let rt = runtime();
    let sandbox = Sandbox::new();
    let server = sandbox.start_with_env(&["--demo"], &NO_LOGIN_LIMITS);
    let (fuzz, targets) = rt.block_on(async {
        let tokens = tokens(&server).await;
        let targets = targets(&server, &tokens).await;
        let orderer = page_session(&server, &sandbox, Some("cust1")).await;
        let form = orderer.get(format!("{}/order", server.url)).send().await.expect("the order page");
        let order_csrf = field_value(&form.text().await.expect("html"), "csrf");
        let fuzz = Fuzz {
            server: &server,
            sandbox: &sandbox,
            dispatcher: tokens.disp.clone(),
            watcher: page_session(&server, &sandbox, Some("disp")).await,
            stranger: tokens.cust2.clone(),
            orderer,
            order_csrf,
            snapshot: RefCell::new(Vec::new()),
            hostile: Cell::new(0),
            requests: Cell::new(0),
            server_errors: Cell::new(0),
            closed: Cell::new(0),
            answers: RefCell::new(BTreeMap::new()),
        };
        *fuzz.snapshot.borrow_mut() = fuzz.snapshot().await;
        (fuzz, targets)
    });

    let mut failures = Vec::new();
    for target in &targets {
        let mut runner = runner();
        if let Err(failure) = runner.run(&case(), |case| rt.block_on(fuzz.check(target, &case))) {
            failures.push(format!("{}: {failure}", target.name));
        }
    }
    for (name, answers) in fuzz.answers.borrow().iter() {
        let answers: Vec<String> = answers.iter().map(|(status, count)| format!("{status}: {count}")).collect();
        println!("  {name:<14} {}", answers.join(", "));
    }
    println!(
        "hostile input to the server: {} endpoints x {} cases, {} hostile requests ({} closed on an oversized \
         body), {} requests in all, {} answered 5xx, {:.1}s",
        targets.len(),
        cases(),
        fuzz.hostile.get(),
        fuzz.closed.get(),
        fuzz.requests.get(),
        fuzz.server_errors.get(),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{} endpoint(s) failed:\n{}", failures.len(), failures.join("\n\n"));
    assert_eq!(fuzz.server_errors.get(), 0);
}

/// A route of the handheld page, with the form it takes.
#[derive(Debug, Clone, Copy)]
enum Route {
    Confirm,
    Fail,
    Sync,
}

/// The `Host` header a case sends.
#[derive(Debug, Clone)]
enum Host {
    Own,
    Localhost,
    Other(String),
}

#[derive(Debug, Clone)]
struct PageCase {
    host: Host,
    case: Case,
}

fn page_case() -> impl Strategy<Value = PageCase> {
    let host = prop_oneof![
        6 => Just(Host::Own),
        2 => Just(Host::Localhost),
        1 => select(&["evil.example", "127.0.0.1", "127.0.0.1:1", "localhost", "[::1]", "LOCALHOST"][..])
            .prop_map(|host| Host::Other(host.to_owned())),
        1 => "[ -~]{0,60}".prop_map(Host::Other),
    ];
    (host, case()).prop_map(|(host, case)| PageCase { host, case })
}

/// What one handheld daemon went through.
struct Handheld<'a> {
    daemon: &'a AgentDaemon,
    deliveries: Vec<String>,
    client: reqwest::Client,
    form_token: String,
    requests: Cell<u64>,
    server_errors: Cell<u64>,
    closed: Cell<u64>,
    saved: Cell<u64>,
    next_id: Cell<u64>,
}

/// The handheld page takes forms up to 1 MiB.
const PAGE_FORM_LIMIT: usize = 1024 * 1024;

impl Handheld<'_> {
    async fn queued(&self) -> Result<u64, TestCaseError> {
        self.requests.set(self.requests.get() + 1);
        let answer = self.client.get(format!("{}/status", self.daemon.url)).send().await;
        let status: Value = match answer {
            Ok(answer) if answer.status() == StatusCode::OK => answer.json().await.unwrap_or(Value::Null),
            Ok(answer) => return Err(TestCaseError::fail(format!("/status answered {}", answer.status()))),
            Err(err) => return Err(TestCaseError::fail(format!("the daemon is down: {err}"))),
        };
        status["queued"].as_u64().ok_or_else(|| TestCaseError::fail(format!("no queued count in {status}")))
    }

    async fn check(&self, route: Route, page_case: &PageCase) -> Result<(), TestCaseError> {
        let PageCase { host, case } = page_case;
        let before = self.queued().await?;
        let next = self.next_id.get() + 1;
        self.next_id.set(next);
        let (path, form) = match route {
            Route::Confirm => (
                "/deliveries/{id}/confirm",
                json!({"token": "{token}", "confirmation_id": "{uuid}", "recipient": "Ms Front", "quantity": "2",
                       "empties": "0", "note": "", "signature": ""}),
            ),
            Route::Fail => (
                "/deliveries/{id}/fail",
                json!({"token": "{token}", "confirmation_id": "{uuid}", "reason": "customer_absent", "note": ""}),
            ),
            Route::Sync => ("/sync", json!({"token": "{token}"})),
        };
        let mut doc = Doc::from_value(&form);
        match case.credential {
            Credential::Right => doc.fill("{token}", &self.form_token),
            Credential::Missing => doc.without("token"),
            Credential::Wrong => doc.fill("{token}", "0123456789abcdef0123456789abcdef"),
            Credential::Garbage => doc.fill("{token}", "\0"),
        }
        doc.fill("{uuid}", &format!("0195d000-0000-7000-8000-{next:012}"));
        let body = case.body(doc, true, PAGE_FORM_LIMIT);
        let oversized = body.len() > PAGE_FORM_LIMIT;
        let port = self.daemon.url.rsplit(':').next().unwrap_or_default();
        let (own_host, host_header) = match host {
            Host::Own => (true, None),
            Host::Localhost => (true, Some(format!("localhost:{port}"))),
            Host::Other(other) => (false, Some(other.clone())),
        };
        // The real id takes turns among the handheld's deliveries, so that more than one can be saved.
        let real = &self.deliveries[usize::try_from(next).unwrap_or_default() % self.deliveries.len()];
        let url = format!("{}{}", self.daemon.url, case.path(path, real));
        let mut request = self.client.post(&url).body(body);
        match case.content_type.unwrap_or("application/x-www-form-urlencoded") {
            "" => {}
            content_type => request = request.header("content-type", content_type),
        }
        if let Some(host) = host_header {
            request = request.header("host", host);
        }
        self.requests.set(self.requests.get() + 1);
        let status = match request.send().await {
            Ok(answer) => answer.status(),
            // A body the page will not read may be cut off.
            Err(_) if oversized || !own_host => {
                self.closed.set(self.closed.get() + 1);
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Err(err) => return Err(TestCaseError::fail(format!("no answer from {url}: {err}"))),
        };
        if status.is_server_error() {
            self.server_errors.set(self.server_errors.get() + 1);
        }
        prop_assert!(!status.is_server_error(), "{status} from {url}");
        if !own_host {
            prop_assert!(status == StatusCode::MISDIRECTED_REQUEST || oversized, "{status} for Host {host:?}, not 421");
        }
        let saved = status == StatusCode::SEE_OTHER;
        if saved && !matches!(route, Route::Sync) {
            prop_assert!(matches!(case.credential, Credential::Right), "saved without the page's token");
            self.saved.set(self.saved.get() + 1);
        }
        let after = self.queued().await?;
        let grew = if saved && !matches!(route, Route::Sync) { 1 } else { 0 };
        prop_assert!(
            after == before || after == before + grew,
            "{status} from {url}: the outbox went from {before} to {after}"
        );
        Ok(())
    }
}

#[test]
fn hostile_forms_to_the_handheld_page_never_break_the_daemon_nor_grow_its_outbox() {
    let started = Instant::now();
    let rt = runtime();
    let sandbox = Sandbox::new();
    let (server, deliveries) = rt.block_on(busy_courier(&sandbox, 6, &[]));
    // With the server gone, nothing leaves the outbox: it can only grow, and
    // only by what the page saved.
    assert!(server.stop().success());
    let daemon = sandbox.agent_daemon("exp1", &["--interval", "3600", "--max-backoff", "3600"]);
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("a client");
    let page = rt.block_on(async {
        let answer = client.get(format!("{}/deliveries/D-000001", daemon.url)).send().await.expect("the page");
        answer.text().await.expect("html")
    });
    let handheld = Handheld {
        daemon: &daemon,
        deliveries,
        client,
        form_token: field_value(&page, "token"),
        requests: Cell::new(0),
        server_errors: Cell::new(0),
        closed: Cell::new(0),
        saved: Cell::new(0),
        next_id: Cell::new(0),
    };

    let mut failures = Vec::new();
    for route in [Route::Confirm, Route::Fail, Route::Sync] {
        let mut runner = runner();
        if let Err(failure) = runner.run(&page_case(), |case| rt.block_on(handheld.check(route, &case))) {
            failures.push(format!("{route:?}: {failure}"));
        }
    }
    println!(
        "hostile forms to the handheld page: 3 routes x {} cases, {} requests ({} closed unread), {} saved, {} \
         answered 5xx, {:.1}s",
        cases(),
        handheld.requests.get(),
        handheld.closed.get(),
        handheld.saved.get(),
        handheld.server_errors.get(),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{} route(s) failed:\n{}", failures.len(), failures.join("\n\n"));
    assert_eq!(handheld.server_errors.get(), 0);
}
