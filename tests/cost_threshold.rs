//! Issue 10, point 6: cost thresholds end to end over real sockets. The reference gateway in
//! front of fake Anthropic upstreams (tests/fakes) with prices in the config; each fake counts
//! the requests it received, so "never touched" is measured, not assumed.

mod common;
mod fakes;

use common::{Gateway, chat};
use fakes::Fake;
use tollgate::config::{Config, HealthRegistry, static_keys};

const CAPPED_KEY: &str = "sk-client-capped";
const OPEN_KEY: &str = "sk-client-open";

struct Upstreams {
    dear: Fake,
    cheap: Fake,
    free: Fake,
}

impl Upstreams {
    async fn start() -> Upstreams {
        Upstreams {
            dear: fakes::anthropic().await,
            cheap: fakes::anthropic().await,
            free: fakes::anthropic().await,
        }
    }
    fn counts(&self) -> (usize, usize, usize) {
        let n = |f: &Fake| f.seen.lock().unwrap().len();
        (n(&self.dear), n(&self.cheap), n(&self.free))
    }
}

/// `dear` costs 10/40 USD per million tokens, `cheap` 1/4, `mid` 3/12; `free` has no price.
fn config(u: &Upstreams) -> String {
    let provider = |name: &str, f: &Fake| {
        format!(
            "[providers.{name}]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key = \"{}\"\n",
            f.base_url(),
            fakes::ANTHROPIC_KEY
        )
    };
    format!(
        r#"
[auth]
enabled = true
[[auth.keys]]
name = "capped"
sha256 = "{capped}"
max_price = {{ input = 2.0, output = 8.0 }}
[[auth.keys]]
name = "open"
sha256 = "{open}"
[usage]
jsonl = ""
{dear}{cheap}{free}
[models.m]
targets = [
  {{ provider = "dear", model = "dear-model", price = {{ input = 10.0, output = 40.0 }} }},
  {{ provider = "cheap", model = "cheap-model", price = {{ input = 1.0, output = 4.0 }} }},
]
[models.chain]
targets = [
  {{ provider = "cheap", model = "err-503", price = {{ input = 1.0, output = 4.0 }} }},
  {{ provider = "dear", model = "dear-model", price = {{ input = 10.0, output = 40.0 }} }},
]
[models.capped-route]
max_price = {{ input = 5.0, output = 20.0 }}
targets = [
  {{ provider = "dear", model = "dear-model", price = {{ input = 10.0, output = 40.0 }} }},
  {{ provider = "cheap", model = "cheap-model", price = {{ input = 1.0, output = 4.0 }} }},
]
[models.pricey]
targets = [
  {{ provider = "dear", model = "dear-model", price = {{ input = 10.0, output = 40.0 }} }},
  {{ provider = "cheap", model = "mid-model", price = {{ input = 3.0, output = 12.0 }} }},
]
[models.unpriced]
targets = [
  {{ provider = "free", model = "free-model" }},
  {{ provider = "cheap", model = "cheap-model", price = {{ input = 1.0, output = 4.0 }} }},
]
[models.unpriced-allowed]
max_price = {{ input = 5.0, allow_unpriced = true }}
targets = [
  {{ provider = "dear", model = "dear-model", price = {{ input = 10.0, output = 40.0 }} }},
  {{ provider = "free", model = "free-model" }},
]
[tiers.any]
models = ["m", "pricey"]
"#,
        capped = tollgate::auth::hash_key(CAPPED_KEY),
        open = tollgate::auth::hash_key(OPEN_KEY),
        dear = provider("dear", &u.dear),
        cheap = provider("cheap", &u.cheap),
        free = provider("free", &u.free),
    )
}

fn body(model: &str) -> String {
    format!(
        r#"{{"model":"{model}","max_tokens":16,"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

struct Answer {
    status: u16,
    attempts: String,
    json: serde_json::Value,
}

async fn ask(gw: &Gateway, model: &str, key: &str, max_price: Option<&str>) -> Answer {
    let auth = bearer(key);
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(v) = max_price {
        headers.push(("x-tollgate-max-price", v));
    }
    let res = chat(gw.addr, &body(model), &headers).await;
    let status = res.status.as_u16();
    let attempts = res
        .headers
        .get("x-tollgate-attempts")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Answer {
        status,
        attempts,
        json: res.json().await,
    }
}

fn message(a: &Answer) -> &str {
    a.json["error"]["message"].as_str().unwrap_or("")
}

/// 6a: expensive first, cheap second, a request threshold between them: the cheap one serves
/// and the expensive upstream never receives a request.
#[tokio::test]
async fn request_threshold_between_two_targets_is_served_by_the_cheap_one() {
    let u = Upstreams::start().await;
    let gw = Gateway::start(&config(&u)).await;
    // without a threshold the expensive one serves (the route's order)
    let a = ask(&gw, "m", OPEN_KEY, None).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert!(
        a.attempts.starts_with("dear/dear-model/200/"),
        "{}",
        a.attempts
    );
    assert_eq!(u.counts(), (1, 0, 0));

    for _ in 0..3 {
        let a = ask(&gw, "m", OPEN_KEY, Some("input=5,output=20")).await;
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(a.json["choices"][0]["message"]["content"], "Hello there!");
        assert!(
            a.attempts
                .starts_with("dear/dear-model/over_max_price/0;cheap/cheap-model/200/"),
            "{}",
            a.attempts
        );
    }
    // the expensive upstream still has only the first, unthresholded request
    assert_eq!(u.counts(), (1, 3, 0));
    // either part may be omitted
    let a = ask(&gw, "m", OPEN_KEY, Some("output=39.99")).await;
    assert_eq!(a.status, 200);
    assert_eq!(u.counts(), (1, 4, 0));
}

/// 6b: the cheap target fails with 503 and the next candidate is above the threshold: it is
/// not tried; the client gets the cheap one's failure, the attempts header lists the skip.
#[tokio::test]
async fn a_fallback_chain_never_reaches_a_target_above_the_threshold() {
    let u = Upstreams::start().await;
    let gw = Gateway::start(&config(&u)).await;
    let a = ask(&gw, "chain", OPEN_KEY, Some("input=5,output=20")).await;
    assert_eq!(a.status, 503, "{}", a.json);
    assert_eq!(a.json["error"]["upstream_status"], 503, "{}", a.json);
    assert!(
        a.attempts
            .starts_with("dear/dear-model/over_max_price/0;cheap/err-503/503/"),
        "{}",
        a.attempts
    );
    assert_eq!(u.counts(), (0, 1, 0));
    // the same chain without a threshold falls back to the expensive one
    let a = ask(&gw, "chain", OPEN_KEY, None).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(u.counts(), (1, 2, 0));
    // and a key's threshold keeps it off the expensive one too
    let a = ask(&gw, "chain", CAPPED_KEY, None).await;
    assert_eq!(a.status, 503, "{}", a.json);
    assert_eq!(u.counts(), (1, 3, 0));
}

/// 6c: nothing within the threshold is a 400 `no_target_within_max_price` naming the limit and
/// the cheapest candidate with its price; no upstream is called.
#[tokio::test]
async fn nothing_within_the_threshold_is_a_400_naming_the_limit_and_the_cheapest() {
    let u = Upstreams::start().await;
    let gw = Gateway::start(&config(&u)).await;
    let a = ask(&gw, "pricey", OPEN_KEY, Some("input=2.5,output=10")).await;
    assert_eq!(a.status, 400, "{}", a.json);
    assert_eq!(a.json["error"]["code"], "no_target_within_max_price");
    assert_eq!(a.json["error"]["type"], "invalid_request_error");
    let msg = message(&a);
    assert!(
        msg.contains("input 2.5 USD, output 10 USD per million tokens"),
        "{msg}"
    );
    assert!(
        msg.contains("`cheap/mid-model` at input 3 USD, output 12 USD per million tokens"),
        "{msg}"
    );
    assert_eq!(
        a.attempts,
        "dear/dear-model/over_max_price/0;cheap/mid-model/over_max_price/0"
    );
    // a tier picks among targets within the threshold, cheapest first
    let a = ask(&gw, "tier:any", OPEN_KEY, Some("input=3")).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert!(
        a.attempts
            .starts_with("dear/dear-model/over_max_price/0;cheap/cheap-model/200/"),
        "{}",
        a.attempts
    );
    let a = ask(&gw, "tier:any", OPEN_KEY, Some("input=0.5")).await;
    assert_eq!(a.status, 400, "{}", a.json);
    assert!(
        message(&a).contains("`cheap/cheap-model` at input 1 USD"),
        "{}",
        a.json
    );
    assert_eq!(u.counts(), (0, 1, 0));
    // a malformed header is a 400 naming the header, before any upstream
    for bad in ["input=cheap", "input=-1", "total=3", "input=1;output=2"] {
        let a = ask(&gw, "m", OPEN_KEY, Some(bad)).await;
        assert_eq!(a.status, 400, "{bad}: {}", a.json);
        assert!(message(&a).contains("x-tollgate-max-price"), "{}", a.json);
    }
    assert_eq!(u.counts(), (0, 1, 0));
}

/// 6c: a key's max_price and a route's max_price are honoured; a header cannot raise the key's.
#[tokio::test]
async fn key_and_route_thresholds_are_honoured_and_a_header_cannot_raise_them() {
    let u = Upstreams::start().await;
    let gw = Gateway::start(&config(&u)).await;
    // the key's threshold (2/8): the cheap one serves
    let a = ask(&gw, "m", CAPPED_KEY, None).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert!(
        a.attempts
            .starts_with("dear/dear-model/over_max_price/0;cheap/cheap-model/200/")
    );
    // a header asking for more is ignored where it would raise the key's threshold
    let a = ask(&gw, "m", CAPPED_KEY, Some("input=100,output=100")).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert!(
        a.attempts.starts_with("dear/dear-model/over_max_price/0;"),
        "{}",
        a.attempts
    );
    let a = ask(&gw, "pricey", CAPPED_KEY, Some("input=100,output=100")).await;
    assert_eq!(a.status, 400, "{}", a.json);
    assert_eq!(a.json["error"]["code"], "no_target_within_max_price");
    assert!(
        message(&a).contains("input 2 USD, output 8 USD per million tokens"),
        "{}",
        a.json
    );
    // ... and lowers it where it is stricter
    let a = ask(&gw, "m", CAPPED_KEY, Some("output=3")).await;
    assert_eq!(a.status, 400, "{}", a.json);
    assert!(
        message(&a).contains("input 2 USD, output 3 USD"),
        "{}",
        a.json
    );
    // the route's own threshold (5/20), for a key without one
    let a = ask(&gw, "capped-route", OPEN_KEY, None).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert!(
        a.attempts
            .starts_with("dear/dear-model/over_max_price/0;cheap/cheap-model/200/")
    );
    // the route's threshold, raised by a header: no
    let a = ask(&gw, "capped-route", OPEN_KEY, Some("input=50,output=50")).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert!(
        a.attempts.starts_with("dear/dear-model/over_max_price/0;"),
        "{}",
        a.attempts
    );
    // four served by the cheap one, the expensive one never touched
    assert_eq!(u.counts(), (0, 4, 0));
}

/// 6c: a target without a known price is skipped under a threshold unless allowed.
#[tokio::test]
async fn unpriced_targets_are_skipped_unless_allowed() {
    let u = Upstreams::start().await;
    let gw = Gateway::start(&config(&u)).await;
    let a = ask(&gw, "unpriced", OPEN_KEY, None).await;
    assert_eq!(a.status, 200);
    assert_eq!(u.counts(), (0, 0, 1));
    let a = ask(&gw, "unpriced", OPEN_KEY, Some("input=50")).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert!(
        a.attempts
            .starts_with("free/free-model/over_max_price/0;cheap/cheap-model/200/"),
        "{}",
        a.attempts
    );
    assert_eq!(u.counts(), (0, 1, 1));
    // the route allows unpriced targets: the dear one is skipped, the unpriced one serves
    let a = ask(&gw, "unpriced-allowed", OPEN_KEY, None).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert!(
        a.attempts
            .starts_with("dear/dear-model/over_max_price/0;free/free-model/200/")
    );
    assert_eq!(u.counts(), (0, 1, 2));
    // a key without allow_unpriced takes that back
    let a = ask(&gw, "unpriced-allowed", CAPPED_KEY, None).await;
    assert_eq!(a.status, 400, "{}", a.json);
    assert!(
        message(&a).contains("`dear/dear-model` at input 10 USD"),
        "{}",
        a.json
    );
    assert_eq!(u.counts(), (0, 1, 2));
}

const PROVIDER: &str = "[providers.p]\nkind = \"mock\"\n";

fn build_error(text: &str) -> String {
    let cfg = match Config::parse(text, "cost.toml") {
        Ok(cfg) => cfg,
        Err(e) => return e.to_string(),
    };
    if let Err(e) = static_keys(&cfg) {
        return e.to_string();
    }
    match cfg.build_runtime(&mut HealthRegistry::new()) {
        Ok(_) => panic!("config accepted: {text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn negative_or_non_numeric_max_prices_are_refused_naming_field_and_file() {
    let model = |mp: &str| {
        format!(
            "{PROVIDER}[models.m]\nmax_price = {mp}\ntargets = [{{ provider = \"p\", model = \"ok\" }}]\n"
        )
    };
    let key = |mp: &str| {
        format!(
            "[[auth.keys]]\nname = \"k\"\nsha256 = \"{}\"\nmax_price = {mp}\n",
            tollgate::auth::hash_key("x")
        )
    };
    let tier = |mp: &str| {
        format!(
            "{PROVIDER}[models.m]\ntargets = [{{ provider = \"p\", model = \"ok\" }}]\n[tiers.t]\nmodels = [\"m\"]\nmax_price = {mp}\n"
        )
    };
    let cases = [
        (model("{ input = -1.0 }"), "models.m.max_price.input"),
        (model("{ output = -0.5 }"), "models.m.max_price.output"),
        (model("{ input = \"3\" }"), "max_price.input"),
        (model("{ output = true }"), "max_price.output"),
        (model("{ allow_unpriced = true }"), "models.m.max_price"),
        (model("{ inpt = 1.0 }"), "inpt"),
        (key("{ input = -3 }"), "auth.keys[0].max_price.input"),
        (key("{ output = \"lots\" }"), "max_price.output"),
        (tier("{ output = -1 }"), "tiers.t.max_price.output"),
        (tier("{ input = nan }"), "tiers.t.max_price.input"),
    ];
    for (text, field) in cases {
        let e = build_error(&text);
        assert!(e.starts_with("cost.toml"), "{e}");
        assert!(e.contains(field), "{field}: {e}");
    }
    // valid ones build
    let ok = format!(
        "{}\n{}",
        key("{ input = 3, output = 15.5 }"),
        model("{ output = 0, allow_unpriced = true }")
    );
    let cfg = Config::parse(&ok, "cost.toml").unwrap();
    let keys = static_keys(&cfg).unwrap();
    assert!(keys.is_some());
    let rt = cfg.build_runtime(&mut HealthRegistry::new()).unwrap();
    let mp = rt.routes.get("m").unwrap().max_price_limit().unwrap();
    assert_eq!(
        (mp.input, mp.output, mp.allow_unpriced),
        (None, Some(0), true)
    );
}
