//! The authorization matrix: every endpoint of the API, and the pages, asked by
//! every role, by the owner of another object, and with forged, expired and
//! revoked tokens; every cell is checked and every mismatch listed. Then plain
//! HTTP against the TLS port, and no secret in the server log after all of it.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::{field_value, Sandbox, TestServer, DEMO_PASSWORD, JWT_SECRET};

/// The callers a row states its expectations for, in this order.
const ROLES: [&str; 7] = ["anon", "admin", "disp", "cust1", "rep1", "exp1", "svc1"];

// What a cell expects: any 2xx, or the exact refusal.
const OK: &str = "2xx";
const E401: &str = "401";
const E403: &str = "403";
const E404: &str = "404";
const E409: &str = "409";
/// A page asked without a session: 303 to the login page.
const LOGIN: &str = "login";
/// A form done: 303 to the page that shows it.
const S303: &str = "303";
/// A form refused before anything else for want of the session's CSRF token
/// (no page renders one for admins and couriers).
const E400: &str = "400";
/// Not asked (tokens mean nothing to the pages).
const NA: &str = "-";
/// A synced confirmation: 200, and the result it got.
const ACCEPTED: &str = "accepted";
const NOT_ASSIGNEE: &str = "not_assignee";

/// Logins in this test go well past the per-minute limits, which are tested elsewhere.
pub const NO_LOGIN_LIMITS: [(&str, &str); 3] = [
    ("HANDOVER__AUTH__LOGIN_ATTEMPTS_PER_MINUTE_PER_USERNAME_AND_ADDRESS", "100000"),
    ("HANDOVER__AUTH__LOGIN_ATTEMPTS_PER_MINUTE_PER_ADDRESS", "100000"),
    ("HANDOVER__AUTH__LOGIN_FAILURES_PER_MINUTE_PER_USERNAME", "100000"),
];

/// One endpoint, or one endpoint on one object, and what each role gets.
struct Row {
    /// Method and path with the objects named by whose they are, like `{D:exp2}`.
    label: String,
    method: Method,
    path: String,
    page: bool,
    body: Option<Value>,
    /// Places a fresh draft of this customer at `{order}` in the path, for each cell.
    fresh_draft: Option<&'static str>,
    expect: [&'static str; 7],
}

fn api(method: Method, path: &str, body: Option<Value>, expect: [&'static str; 7]) -> Row {
    Row {
        label: format!("{method} {path}"),
        method,
        path: path.to_owned(),
        page: false,
        body,
        fresh_draft: None,
        expect,
    }
}

fn get(path: &str, expect: [&'static str; 7]) -> Row {
    api(Method::GET, path, None, expect)
}

fn post(path: &str, body: Value, expect: [&'static str; 7]) -> Row {
    api(Method::POST, path, Some(body), expect)
}

fn page(path: &str, expect: [&'static str; 7]) -> Row {
    Row { page: true, ..get(path, expect) }
}

/// A form of the pages, posted with the caller's CSRF token at `{csrf}`.
fn form(path: &str, fields: Value, expect: [&'static str; 7]) -> Row {
    Row { page: true, ..post(path, fields, expect) }
}

/// A draft step (`confirm`, `cancel`) on a fresh draft of `customer` in each
/// cell, through the API or (`page`) the ordering screen's form.
fn on_fresh_draft(page: bool, step: &str, customer: &'static str, expect: [&'static str; 7]) -> Row {
    let row = if page {
        form(&format!("/order/{{order}}/{step}"), json!({"csrf": "{csrf}"}), expect)
    } else {
        post(&format!("/api/v1/orders/{{order}}/{step}"), json!({}), expect)
    };
    Row { fresh_draft: Some(customer), label: format!("{} ({customer}'s)", row.label), ..row }
}

/// A push of one delivered confirmation for the delivery at `delivery`.
fn confirm(delivery: &str, id: &str, version: u64, expect: [&'static str; 7]) -> Row {
    let body = json!({"device_id": "{device}", "confirmations": [{
        "confirmation_id": "{uuid}", "delivery_id": id, "version": version, "outcome": "delivered",
        "quantity": 1, "recipient": "Front desk", "captured_at": "2030-01-01T09:00:00Z"
    }]});
    Row {
        label: format!("POST /api/v1/sync/confirmations ({delivery})"),
        ..post("/api/v1/sync/confirmations", body, expect)
    }
}

/// Every row of the matrix. Objects are named by whose they are: `D:exp1` is a
/// delivery assigned to exp1, `D:svc3` one entrusted to the other seller (S2)
/// and assigned to its serviceman, `R:cust2` a receipt of another customer.
fn rows(fx: &Fixtures) -> Vec<Row> {
    let anyone = [OK; 7];
    let accounts = [E401, OK, OK, OK, OK, OK, OK];
    let admin = [E401, OK, E403, E403, E403, E403, E403];
    let dispatcher = [E401, E403, OK, E403, E403, E403, E403];
    let placer = [E401, E403, OK, OK, E403, E403, E403];
    let couriers = [E401, E403, E403, E403, E403, OK, OK];
    let not_theirs = |who: &'static str| [E401, E403, E403, E403, E403, who, NOT_ASSIGNEE];
    vec![
        get("/healthz", anyone),
        post("/api/v1/auth/login", json!({"username": "cust3", "password": DEMO_PASSWORD}), anyone),
        post("/api/v1/auth/refresh", json!({"refresh_token": "{refresh}"}), anyone),
        post("/api/v1/auth/logout", json!({"refresh_token": "{refresh}"}), anyone),
        get("/api/v1/auth/me", accounts),
        // The demo's own node again: an import that changes nothing.
        post(
            "/api/v1/admin/network",
            json!({"nodes": [{"id": "B3", "kind": "branch_warehouse", "name": "East branch"}]}),
            admin,
        ),
        post("/api/v1/admin/devices/nobody-device/revoke", json!({}), admin),
        post("/api/v1/admin/devices/nobody-device/release", json!({}), admin),
        get("/api/v1/nodes/B1/stock", dispatcher),
        get("/api/v1/nodes/NOPE/stock", [E401, E403, E404, E403, E403, E403, E403]),
        post("/api/v1/nodes/B1/stock", json!({"item_id": "DR-300", "quantity": 1}), dispatcher),
        post("/api/v1/shipments/run", json!({}), dispatcher),
        get("/api/v1/stock/audit", dispatcher),
        post("/api/v1/legs/{L:first}/issue", json!({}), dispatcher),
        post("/api/v1/legs/{L:last}/issue", json!({}), [E401, E403, E409, E403, E403, E403, E403]),
        get("/api/v1/deliveries", [E401, E403, OK, E403, OK, OK, OK]),
        get("/api/v1/deliveries/{D:exp1}", [E401, E403, OK, E403, E404, OK, E404]),
        get("/api/v1/deliveries/{D:exp2}", [E401, E403, OK, E403, E404, E404, E404]),
        get("/api/v1/deliveries/{D:svc1}", [E401, E403, OK, E403, OK, E404, OK]),
        get("/api/v1/deliveries/{D:svc2}", [E401, E403, OK, E403, OK, E404, E404]),
        get("/api/v1/deliveries/{D:svc3}", [E401, E403, OK, E403, E404, E404, E404]),
        get("/api/v1/deliveries/D-999999", [E401, E403, E404, E403, E404, E404, E404]),
        post(
            "/api/v1/deliveries/{D:exp1}/assign",
            json!({"assignee": "exp1"}),
            [E401, E403, OK, E403, E404, E403, E403],
        ),
        post("/api/v1/deliveries/{D:svc1}/assign", json!({"assignee": "svc1"}), [E401, E403, OK, E403, OK, E403, E403]),
        post(
            "/api/v1/deliveries/{D:svc3}/assign",
            json!({"assignee": "svc3"}),
            [E401, E403, OK, E403, E404, E403, E403],
        ),
        get("/api/v1/sync/assignments", couriers),
        post("/api/v1/sync/confirmations", json!({"device_id": "{device}", "confirmations": []}), couriers),
        confirm("D:exp2", &fx.id("{D:exp2}"), fx.version("{D:exp2}"), not_theirs(NOT_ASSIGNEE)),
        confirm("D:svc2", &fx.id("{D:svc2}"), fx.version("{D:svc2}"), not_theirs(NOT_ASSIGNEE)),
        // exp1 first, so svc1 comes after the delivery is confirmed: still not its own.
        confirm("D:exp1-own", &fx.id("{D:exp1-own}"), fx.version("{D:exp1-own}"), not_theirs(ACCEPTED)),
        post("/api/v1/orders", json!({"customer_id": "C1", "item_id": "DR-300", "quantity": 1}), placer),
        post("/api/v1/orders", json!({"customer_id": "C2", "item_id": "DR-300", "quantity": 1}), dispatcher)
            .labelled("POST /api/v1/orders (for C2)"),
        get("/api/v1/orders", placer),
        get("/api/v1/orders/{O:cust1}", placer),
        get("/api/v1/orders/{O:cust2}", [E401, E403, OK, E404, E403, E403, E403]),
        on_fresh_draft(false, "confirm", "C1", placer),
        on_fresh_draft(false, "confirm", "C2", [E401, E403, OK, E404, E403, E403, E403]),
        on_fresh_draft(false, "cancel", "C1", placer),
        on_fresh_draft(false, "cancel", "C2", [E401, E403, OK, E404, E403, E403, E403]),
        get("/api/v1/receipts", placer),
        get("/api/v1/receipts?customer_id=C2", dispatcher),
        get("/api/v1/receipts/{R:cust1}", placer),
        get("/api/v1/receipts/{R:cust2}", [E401, E403, OK, E404, E403, E403, E403]),
        get("/api/v1/receipts/R-999999", [E401, E403, E404, E404, E403, E403, E403]),
        get("/api/v1/customers/C1", placer),
        get("/api/v1/customers/C2", [E401, E403, OK, E404, E403, E403, E403]),
        get("/api/v1/customers/C9", [E401, E403, E404, E404, E403, E403, E403]),
        page("/dashboard", [LOGIN, E403, OK, E403, OK, E403, E403]),
        page("/order", [LOGIN, E403, E403, OK, E403, E403, E403]),
        page("/order/{O:cust1}", [LOGIN, E403, E403, OK, E403, E403, E403]),
        page("/order/{O:cust2}", [LOGIN, E403, E403, E404, E403, E403, E403]),
        page("/receipts/{R:cust1}", [LOGIN, E404, OK, OK, E404, E404, E404]),
        page("/receipts/{R:cust2}", [LOGIN, E404, OK, E404, E404, E404, E404]),
        page("/receipts/R-999999", [LOGIN, E404, E404, E404, E404, E404, E404]),
        form("/dashboard/run", json!({"csrf": "{csrf}"}), [LOGIN, E400, S303, E403, E403, E400, E400]),
        form("/dashboard/legs/{L:first}/issue", json!({"csrf": "{csrf}"}), [LOGIN, E400, S303, E403, E403, E400, E400]),
        form(
            "/dashboard/deliveries/{D:svc1}/assign",
            json!({"csrf": "{csrf}", "assignee": "svc1"}),
            [LOGIN, E400, S303, E404, S303, E400, E400],
        ),
        form(
            "/dashboard/deliveries/{D:svc3}/assign",
            json!({"csrf": "{csrf}", "assignee": "svc3"}),
            [LOGIN, E400, S303, E404, E404, E400, E400],
        ),
        form(
            "/order",
            json!({"csrf": "{csrf}", "item_id": "DR-300", "quantity": "1"}),
            [LOGIN, E400, E403, S303, E403, E400, E400],
        ),
        on_fresh_draft(true, "confirm", "C1", [LOGIN, E400, E403, S303, E403, E400, E400]),
        on_fresh_draft(true, "confirm", "C2", [LOGIN, E400, E403, E404, E403, E400, E400]),
        on_fresh_draft(true, "cancel", "C1", [LOGIN, E400, E403, S303, E403, E400, E400]),
        on_fresh_draft(true, "cancel", "C2", [LOGIN, E400, E403, E404, E403, E400, E400]),
        // Corrections last: they close what the rows above use. A cell after
        // the one that cancelled answers as that one did (cancelling twice is
        // harmless), or refuses before looking.
        post(
            "/api/v1/deliveries/{D:exp2}/cancel",
            json!({"reason": "matrix"}),
            [E401, E403, OK, E403, E404, E403, E403],
        ),
        post("/api/v1/deliveries/{D:svc1}/cancel", json!({"reason": "matrix"}), [E401, E403, OK, E403, OK, E403, E403]),
        post("/api/v1/deliveries/{D:exp1-own}/reverse", json!({"reason": "matrix"}), dispatcher),
        post("/api/v1/receipts/{R:cust1}/cancel", json!({"reason": "matrix"}), placer),
        form(
            "/dashboard/deliveries/{D:svc2}/cancel",
            json!({"csrf": "{csrf}", "reason": "matrix"}),
            [LOGIN, E400, S303, E404, S303, E400, E400],
        ),
        form("/receipts/{R:cust2}/cancel", json!({"csrf": "{csrf}"}), [LOGIN, E400, E403, E404, E403, E400, E400]),
        post(
            "/api/v1/receipts/{R:cust2}/cancel",
            json!({"reason": "matrix"}),
            [E401, E403, OK, E404, E403, E403, E403],
        ),
    ]
}

impl Row {
    fn labelled(self, label: &str) -> Self {
        Row { label: label.to_owned(), ..self }
    }
}

/// Whose expectations a column takes.
#[derive(Clone, Copy)]
enum Stands {
    /// The role at this index of [`ROLES`].
    Role(usize),
    /// A token the server must refuse: 401 wherever a token is needed.
    Refused,
}

/// One column: who calls, and how.
struct Caller {
    label: &'static str,
    stands: Stands,
    token: Option<String>,
    /// The device its session is bound to, for the sync bodies.
    device: String,
    /// A client logged in to the pages (anonymous for `anon`), and the CSRF
    /// token of its session if a page gave it one; `None`: pages not asked.
    page: Option<(reqwest::Client, Option<String>)>,
}

impl Caller {
    fn expects(&self, row: &Row) -> &'static str {
        match self.stands {
            Stands::Role(index) => row.expect[index],
            Stands::Refused if row.page => NA,
            // A public endpoint ignores the token; the others refuse it.
            Stands::Refused if row.expect[0] != E401 => row.expect[0],
            Stands::Refused => E401,
        }
    }
}

/// The objects the rows name, made through the API like a day's work.
struct Fixtures {
    ids: BTreeMap<&'static str, String>,
    versions: BTreeMap<&'static str, u64>,
}

impl Fixtures {
    fn id(&self, name: &str) -> String {
        self.ids.get(name).cloned().unwrap_or_else(|| panic!("no fixture {name}"))
    }

    fn version(&self, name: &str) -> u64 {
        self.versions.get(name).copied().unwrap_or_else(|| panic!("no version of {name}"))
    }

    fn resolve(&self, template: &str) -> String {
        self.ids.iter().fold(template.to_owned(), |path, (name, id)| path.replace(name, id))
    }
}

async fn fixtures(server: &TestServer, tokens: &BTreeMap<&str, String>) -> Fixtures {
    let token = |name: &str| tokens.get(name).cloned().unwrap_or_else(|| panic!("no token for {name}"));
    let disp = token("disp");
    // R-000001..3 from B1 (exp1, exp2, exp1 by load), R-000004..5 entrusted to
    // S1, R-000006 to S2, R-000007 (C2, 11 units) from the master warehouse.
    let orders = [
        ("C1", "TC-100", 1),
        ("C1", "TC-100", 1),
        ("C1", "TC-100", 1),
        ("C1", "TC-200", 1),
        ("C1", "TC-200", 1),
        ("C3", "TC-200", 1),
        ("C2", "TC-100", 11),
    ];
    for (customer, item, quantity) in orders {
        server.confirm_order(&disp, customer, item, quantity).await;
    }
    server.plan(&disp).await;
    for (delivery, seller, serviceman) in
        [("D-000004", "rep1", "svc1"), ("D-000005", "rep1", "svc2"), ("D-000006", "rep2", "svc3")]
    {
        let path = format!("/api/v1/deliveries/{delivery}/assign");
        let (status, body) = server.post(&path, &json!({"assignee": serviceman}), Some(&token(seller))).await;
        assert_eq!(status, StatusCode::OK, "{seller} assigns {delivery}: {body}");
    }
    let mut fx = Fixtures { ids: BTreeMap::new(), versions: BTreeMap::new() };
    let deliveries = [
        ("{D:exp1}", "D-000001", "exp1"),
        ("{D:exp2}", "D-000002", "exp2"),
        ("{D:exp1-own}", "D-000003", "exp1"),
        ("{D:svc1}", "D-000004", "svc1"),
        ("{D:svc2}", "D-000005", "svc2"),
        ("{D:svc3}", "D-000006", "svc3"),
    ];
    for (name, id, assignee) in deliveries {
        let (_, delivery) = server.get(&format!("/api/v1/deliveries/{id}"), Some(&disp)).await;
        assert_eq!(delivery["assignee"], assignee, "the fixture {name}: {delivery}");
        fx.versions.insert(name, delivery["version"].as_u64().expect("a version"));
        fx.ids.insert(name, id.to_owned());
    }
    let (_, master) = server.get("/api/v1/deliveries/D-000007", Some(&disp)).await;
    assert_eq!((&master["source_node"], master["legs"].as_array().map(Vec::len)), (&json!("MW"), Some(2)), "{master}");
    fx.ids.insert("{L:first}", master["legs"][0]["leg_id"].as_str().expect("a leg id").to_owned());
    fx.ids.insert("{L:last}", master["legs"][1]["leg_id"].as_str().expect("a leg id").to_owned());
    fx.ids.insert("{R:cust1}", "R-000001".into());
    fx.ids.insert("{R:cust2}", "R-000007".into());
    for (name, customer) in [("{O:cust1}", "C1"), ("{O:cust2}", "C2")] {
        fx.ids.insert(name, draft(server, &disp, customer).await);
    }
    fx
}

/// Places a draft order of one drum unit for `customer`; returns its id.
async fn draft(server: &TestServer, dispatcher: &str, customer: &str) -> String {
    let body = json!({"customer_id": customer, "item_id": "DR-300", "quantity": 1});
    let (status, draft) = server.post("/api/v1/orders", &body, Some(dispatcher)).await;
    assert_eq!(status, StatusCode::CREATED, "{draft}");
    draft["order_id"].as_str().expect("an order id").to_owned()
}

/// The claims of a token the server issued.
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON claims")
}

/// `claims` with `changes` applied, signed with `key` under `algorithm`.
fn resign(claims: &Value, changes: Value, algorithm: Algorithm, key: &str) -> String {
    let mut claims = claims.clone();
    for (name, value) in changes.as_object().into_iter().flatten() {
        claims[name.as_str()] = value.clone();
    }
    jsonwebtoken::encode(&Header::new(algorithm), &claims, &EncodingKey::from_secret(key.as_bytes())).expect("signed")
}

/// Tokens the server must refuse, each made from a real one of exp1.
fn forgeries(real: &str) -> Vec<(&'static str, String)> {
    let claims = claims_of(real);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (header, rest) = real.split_once('.').expect("a JWT");
    let signature = rest.split_once('.').expect("a JWT").1;
    let mut promoted = claims.clone();
    promoted["role"] = json!("dispatcher");
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(promoted.to_string())
    );
    let hs256 = |changes: Value| resign(&claims, changes, Algorithm::HS256, JWT_SECRET);
    vec![
        ("tampered", format!("{header}.{}.{signature}", URL_SAFE_NO_PAD.encode(promoted.to_string()))),
        ("expired", hs256(json!({"iat": now - 3600, "exp": now - 1800}))),
        ("aud", hs256(json!({"aud": "another-api"}))),
        ("iss", hs256(json!({"iss": "another-issuer"}))),
        ("alg:none", unsigned),
        ("key", resign(&claims, json!({}), Algorithm::HS256, "a-key-that-is-not-the-servers-own-key!")),
        ("HS512", resign(&claims, json!({}), Algorithm::HS512, JWT_SECRET)),
        ("exp:str", hs256(json!({"exp": (now + 600).to_string()}))),
    ]
}

/// A client logged in to the pages as `username` (none: anonymous).
pub async fn page_session(server: &TestServer, sandbox: &Sandbox, username: Option<&str>) -> reqwest::Client {
    let client = server.page_client(sandbox);
    let Some(username) = username else { return client };
    let url = format!("{}/login", server.url);
    let form = client.get(&url).send().await.expect("the login page").text().await.expect("html");
    let csrf = field_value(&form, "csrf");
    let fields = [("csrf", csrf.as_str()), ("username", username), ("password", DEMO_PASSWORD)];
    let answer = client.post(&url).form(&fields).send().await.expect("an answer");
    assert_eq!(answer.status(), StatusCode::SEE_OTHER, "page login of {username}");
    client
}

/// A page session as [`page_session`] makes it, with the CSRF token of the
/// first of its pages that has a form.
async fn page_with_csrf(
    server: &TestServer,
    sandbox: &Sandbox,
    username: Option<&str>,
) -> (reqwest::Client, Option<String>) {
    let client = page_session(server, sandbox, username).await;
    for path in ["/order", "/dashboard"] {
        let page = client.get(format!("{}{path}", server.url)).send().await.expect("a page");
        let html = page.text().await.expect("html");
        if html.contains("name=\"csrf\"") {
            return (client, Some(field_value(&html, "csrf")));
        }
    }
    (client, None)
}

/// What the test saw, and what the server must never write down.
struct Run<'a> {
    server: &'a TestServer,
    fixtures: Fixtures,
    dispatcher: String,
    secrets: Vec<String>,
    next_uuid: u64,
}

impl Run<'_> {
    /// Logs in as `username` on a device of its own; keeps the tokens as secrets.
    async fn login(&mut self, username: &str, device: Option<&str>) -> (String, String) {
        let pair = self.server.login(username, DEMO_PASSWORD, device).await;
        self.secrets.extend([pair.access_token.clone(), pair.refresh_token.clone()]);
        (pair.access_token, pair.refresh_token)
    }

    /// Asks one cell; returns what it got (as the matrix prints it) and the answer.
    async fn ask(&mut self, row: &Row, caller: &Caller) -> (String, String) {
        if row.page && caller.page.is_none() {
            return (NA.to_owned(), String::new());
        }
        let mut path = self.fixtures.resolve(&row.path);
        if let Some(customer) = row.fresh_draft {
            path = path.replace("{order}", &draft(self.server, &self.dispatcher, customer).await);
        }
        let url = format!("{}{path}", self.server.url);
        let response = match &caller.page {
            Some((client, csrf)) if row.page => match &row.body {
                None => client.get(&url).send().await,
                Some(fields) => {
                    let mut fields: Vec<(String, String)> = fields
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(name, value)| (name.clone(), value.as_str().unwrap_or_default().to_owned()))
                        .collect();
                    match csrf {
                        Some(csrf) => {
                            fields.iter_mut().filter(|(_, v)| v == "{csrf}").for_each(|(_, v)| v.clone_from(csrf))
                        }
                        None => fields.retain(|(_, value)| value != "{csrf}"),
                    }
                    client.post(&url).form(&fields).send().await
                }
            },
            _ => {
                let mut request = self.server.client.request(row.method.clone(), &url);
                if let Some(token) = &caller.token {
                    request = request.bearer_auth(token);
                }
                if let Some(body) = &row.body {
                    let body = self.fill(&body.to_string(), caller).await;
                    request = request.header("content-type", "application/json").body(body);
                }
                request.send().await
            }
        };
        let response = response.expect("the server answers");
        let status = response.status();
        let to_login = response
            .headers()
            .get("location")
            .and_then(|location| location.to_str().ok())
            .is_some_and(|location| location.starts_with("/login"));
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Some(refresh) = body["refresh_token"].as_str() {
            self.secrets.push(refresh.to_owned());
        }
        let seen = match (status.is_success(), &body["results"][0]) {
            (true, Value::Object(result)) if result["status"] == "accepted" => ACCEPTED.to_owned(),
            (true, Value::Object(result)) => result.get("code").and_then(Value::as_str).unwrap_or("?").to_owned(),
            (true, _) if row.method != Method::GET => OK.to_owned(),
            (true, _) => match scoped_list(&path, caller.label, &body) {
                Some((0, _)) => "empty".to_owned(),
                Some((_, 0)) | None => OK.to_owned(),
                Some((_, foreign)) => format!("{foreign} not theirs"),
            },
            (false, _) if to_login => LOGIN.to_owned(),
            (false, _) => status.as_u16().to_string(),
        };
        (seen, text.chars().take(160).collect())
    }

    /// The per-cell parts of a body: the caller's device, a fresh confirmation
    /// id, a refresh token of a fresh session.
    async fn fill(&mut self, body: &str, caller: &Caller) -> String {
        let mut body = body.replace("{device}", &caller.device);
        if body.contains("{uuid}") {
            self.next_uuid += 1;
            body = body.replace("{uuid}", &format!("0195a000-0000-7000-8000-{:012}", self.next_uuid));
        }
        if body.contains("{refresh}") {
            let (_, refresh) = self.login("rep2", None).await;
            body = body.replace("{refresh}", &refresh);
        }
        body
    }
}

/// For a list that a role sees only part of: how many items it got, and how
/// many of them are not the caller's (`None`: not such a list, or a dispatcher).
fn scoped_list(path: &str, caller: &str, body: &Value) -> Option<(usize, usize)> {
    let (items, field, own) = match (path.split('?').next().unwrap_or(path), caller) {
        ("/api/v1/deliveries", "exp1" | "svc1") => ("deliveries", "assignee", caller),
        ("/api/v1/deliveries", "rep1") => ("deliveries", "entrusted_to", "S1"),
        ("/api/v1/receipts", "cust1") => ("receipts", "customer_id", "C1"),
        ("/api/v1/orders", "cust1") => ("orders", "customer_id", "C1"),
        _ => return None,
    };
    let items = body[items].as_array().map(Vec::as_slice).unwrap_or_default();
    Some((items.len(), items.iter().filter(|item| item[field] != own).count()))
}

/// The matrix as a table: endpoints down, callers across; `!` marks a mismatch.
fn table(rows: &[Row], callers: &[Caller], seen: &[Vec<(String, bool)>]) -> String {
    let first = rows.iter().map(|row| row.label.len()).max().unwrap_or(0);
    let widths: Vec<usize> = callers
        .iter()
        .enumerate()
        .map(|(c, caller)| seen.iter().map(|cells| cells[c].0.len() + 1).max().unwrap_or(0).max(caller.label.len()))
        .collect();
    let mut out = format!("{:first$}", "endpoint \\ caller");
    for (caller, width) in callers.iter().zip(&widths) {
        let _ = write!(out, " | {:width$}", caller.label);
    }
    for (row, cells) in rows.iter().zip(seen) {
        let _ = write!(out, "\n{:first$}", row.label);
        for ((cell, matches), width) in cells.iter().zip(&widths) {
            let cell = if *matches { cell.clone() } else { format!("{cell}!") };
            let _ = write!(out, " | {cell:width$}");
        }
    }
    out
}

#[tokio::test]
async fn every_endpoint_refuses_every_caller_it_does_not_serve_and_every_bad_token() {
    let started = std::time::Instant::now();
    let sandbox = Sandbox::new();
    let server = sandbox.start_with_env(&["--demo"], &NO_LOGIN_LIMITS);
    let mut run = Run {
        server: &server,
        fixtures: Fixtures { ids: BTreeMap::new(), versions: BTreeMap::new() },
        dispatcher: String::new(),
        secrets: Vec::new(),
        next_uuid: 0,
    };
    let mut tokens = BTreeMap::new();
    for username in ["admin", "disp", "cust1", "rep1", "rep2", "exp1", "svc1"] {
        let (access, _) = run.login(username, Some(&format!("authz-{username}"))).await;
        tokens.insert(username, access);
    }
    run.dispatcher = tokens["disp"].clone();
    run.fixtures = fixtures(&server, &tokens).await;

    // A token re-signed with the server's key, unchanged, is accepted: the
    // forgeries below fail for what they change, not for how they are made.
    let resigned = resign(&claims_of(&tokens["exp1"]), json!({}), Algorithm::HS256, JWT_SECRET);
    let (status, me) = server.get("/api/v1/auth/me", Some(&resigned)).await;
    assert_eq!((status, &me["username"]), (StatusCode::OK, &json!("exp1")), "{me}");

    let mut callers = Vec::new();
    for (index, label) in ROLES.into_iter().enumerate() {
        let username = (label != "anon").then_some(label);
        callers.push(Caller {
            label,
            stands: Stands::Role(index),
            token: username.map(|name| tokens[name].clone()),
            device: format!("authz-{label}"),
            page: Some(page_with_csrf(&server, &sandbox, username).await),
        });
    }
    let refused = |label: &'static str, token: String| Caller {
        label,
        stands: Stands::Refused,
        token: Some(token),
        device: "authz-exp1".into(),
        page: None,
    };
    for (label, token) in forgeries(&tokens["exp1"]) {
        callers.push(refused(label, token));
    }
    // A lost handheld, cut off by the admin; a session ended by logout.
    let (lost, _) = run.login("exp1", Some("authz-lost")).await;
    let (status, _) = server.post("/api/v1/admin/devices/authz-lost/revoke", &json!({}), Some(&tokens["admin"])).await;
    assert_eq!(status, StatusCode::OK);
    callers.push(refused("revoked", lost));
    let (ended, refresh) = run.login("exp1", Some("authz-out")).await;
    let (status, _) = server.post("/api/v1/auth/logout", &json!({"refresh_token": refresh}), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    callers.push(refused("logout", ended));

    let rows = rows(&run.fixtures);
    let mut seen = Vec::new();
    let mut mismatches = Vec::new();
    for row in &rows {
        let mut cells = Vec::new();
        for caller in &callers {
            let expected = caller.expects(row);
            let (got, answer) = run.ask(row, caller).await;
            if got != expected {
                mismatches.push(format!("{} as {}: expected {expected}, got {got}: {answer}", row.label, caller.label));
            }
            cells.push((got.clone(), got == expected));
        }
        seen.push(cells);
    }
    println!("{}", table(&rows, &callers, &seen));
    let cells: usize = seen.iter().map(|cells| cells.iter().filter(|(cell, _)| cell != NA).count()).sum();
    println!("{} rows x {} callers: {cells} requests, {} mismatch(es)", rows.len(), callers.len(), mismatches.len());

    let mut failures = mismatches;
    failures.extend(plain_http_answer(&server).await);
    failures.extend(secrets_in_the_log(&server, &run.secrets));
    println!("authorization matrix: {:.1}s", started.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

/// Plain HTTP to the TLS port, even carrying a valid login, gets no HTTP
/// answer; returns what went wrong.
async fn plain_http_answer(server: &TestServer) -> Vec<String> {
    let address = server.url.trim_start_matches("https://");
    let body = json!({"username": "disp", "password": DEMO_PASSWORD}).to_string();
    let request = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("the port is open");
    // The server may close before taking it all: that is a refusal too.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let mut failures = Vec::new();
    if answer.starts_with(b"HTTP/") {
        failures.push(format!("plain HTTP was answered: {:?}", String::from_utf8_lossy(&answer)));
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("a client");
    if let Ok(answer) = client.get(format!("http://{address}/healthz")).send().await {
        failures.push(format!("a plain HTTP client got an answer: {}", answer.status()));
    }
    failures
}

/// The demo password, the signing key and every token issued in the run are
/// absent from the server's log (the demo banner that names the password goes
/// to standard output, not to the log); returns each one found.
fn secrets_in_the_log(server: &TestServer, issued: &[String]) -> Vec<String> {
    if std::env::var_os("TEST_LOG").is_some() {
        println!("TEST_LOG is set: the log went to the terminal, not checked for secrets");
        return Vec::new();
    }
    let log = server.log();
    if !log.contains("/api/v1/auth/login") {
        return vec![format!("the log is not captured:\n{log}")];
    }
    let secrets: Vec<&str> = [DEMO_PASSWORD, JWT_SECRET].into_iter().chain(issued.iter().map(String::as_str)).collect();
    println!("{} secrets (password, key, tokens issued) looked for in {} bytes of log", secrets.len(), log.len());
    secrets
        .into_iter()
        .filter(|secret| log.contains(secret))
        .map(|secret| format!("in the server log: {secret}"))
        .collect()
}
