//! Route table tests: splits, stickiness, tiers, rules, aliases, per-request controls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

use super::*;
use crate::auth::KeyIdentity;
use crate::error::{ErrorKind, GatewayError};
use crate::ext::Routed;
use crate::fallback::tests::{attempts, chat, request, send, stack, text};
use crate::provider::Provider;
use crate::provider::mock::MockProvider;
use crate::request::{Api, ParsedRequest, parse_body};
use crate::target::{Capabilities, Target};
use crate::usage::Price;

fn p(name: &str) -> Arc<dyn Provider> {
    Arc::new(MockProvider::new(name.to_owned()))
}

fn t(provider: &Arc<dyn Provider>, model: &str) -> Arc<Target> {
    Target::new(provider.clone(), model).into_arc()
}

fn parsed(body: &str) -> ParsedRequest {
    parse_body(Api::ChatCompletions, bytes::Bytes::from(body.to_owned())).unwrap()
}

fn simple(model: &str) -> ParsedRequest {
    parsed(&format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#
    ))
}

fn ids(d: &RouteDecision) -> Vec<String> {
    d.targets.iter().map(|t| t.id.to_string()).collect()
}

fn canary() -> RouteTable {
    let a = p("a");
    RouteTable::builder()
        .model(
            ModelRoute::split(
                "canary",
                vec![
                    Variant::new("stable", 90, vec![t(&a, "v1")]),
                    Variant::new("next", 10, vec![t(&a, "v2")]),
                ],
            )
            .sticky(true),
        )
        .build()
        .unwrap()
}

#[test]
fn split_90_10_over_10000_requests_is_within_2_percent() {
    let table = canary();
    let req = simple("canary");
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..10_000 {
        let d = table.route(&req, RouteInput::default()).unwrap();
        *counts
            .entry(d.variant.as_deref().unwrap().to_owned())
            .or_default() += 1;
        // the variant's targets are the ones used
        assert_eq!(
            ids(&d)[0],
            if d.variant.as_deref() == Some("stable") {
                "a/v1"
            } else {
                "a/v2"
            }
        );
    }
    let stable = f64::from(counts["stable"]) / 10_000.0;
    assert!((0.88..=0.92).contains(&stable), "stable share {stable}");
    assert_eq!(counts["stable"] + counts["next"], 10_000);
}

#[test]
fn sticky_keys_stay_on_one_variant() {
    let table = canary();
    let req = simple("canary");
    let mut stable_keys = 0;
    for k in 0..1000 {
        let key = format!("key-{k}");
        let mut h = HeaderMap::new();
        h.insert(STICKY_HEADER, key.parse().unwrap());
        let first = table
            .route(
                &req,
                RouteInput {
                    headers: Some(&h),
                    key_id: None,
                    ..Default::default()
                },
            )
            .unwrap()
            .variant;
        for _ in 0..10 {
            let v = table
                .route(
                    &req,
                    RouteInput {
                        headers: Some(&h),
                        key_id: None,
                        ..Default::default()
                    },
                )
                .unwrap()
                .variant;
            assert_eq!(v, first, "{key} moved");
        }
        // the key id (Auth's KeyIdentity) is the sticky key when no header is sent
        let by_key_id = table
            .route(
                &req,
                RouteInput {
                    headers: None,
                    key_id: Some(&key),
                    ..Default::default()
                },
            )
            .unwrap()
            .variant;
        assert_eq!(by_key_id, first);
        if first.as_deref() == Some("stable") {
            stable_keys += 1;
        }
    }
    // keys spread by weight too
    assert!((850..=950).contains(&stable_keys), "{stable_keys}");
}

#[tokio::test(start_paused = true)]
async fn variant_is_sent_as_header_and_reported() {
    let h = RouteHandle::new(canary());
    let mut svc = stack(&h);
    let mut req = chat("canary", false);
    req.extensions_mut().insert(KeyIdentity::new("k1", "k1"));
    let res = send(&mut svc, req).await;
    assert_eq!(res.status(), 200);
    let v = res.headers()[VARIANT_HEADER].to_str().unwrap().to_owned();
    let routed = res.extensions().get::<Routed>().expect("Routed");
    assert_eq!(routed.variant.as_deref(), Some(v.as_str()));
    assert_eq!(&*routed.model, "canary");
    let target = if v == "stable" { "a/v1" } else { "a/v2" };
    assert_eq!(attempts(&res), format!("{target}/200/0"));
}

#[tokio::test]
async fn aliases_and_pins_resolve_exactly_and_unknown_is_404() {
    let a = p("anthropic");
    let table = RouteTable::builder()
        .model(ModelRoute::new(
            "claude-opus-4-20260315",
            vec![t(&a, "claude-opus-4-20260315")],
        ))
        .model(ModelRoute::new(
            "claude-opus-4-20250514",
            vec![t(&a, "claude-opus-4-20250514")],
        ))
        .alias("claude-opus-4", "claude-opus-4-20260315")
        .build()
        .unwrap();
    let d = table
        .route(&simple("claude-opus-4"), RouteInput::default())
        .unwrap();
    assert_eq!(&*d.model, "claude-opus-4-20260315");
    assert_eq!(ids(&d), ["anthropic/claude-opus-4-20260315"]);
    let d = table
        .route(&simple("claude-opus-4-20250514"), RouteInput::default())
        .unwrap();
    assert_eq!(ids(&d), ["anthropic/claude-opus-4-20250514"]);
    // no prefix or fuzzy matching
    for name in ["claude-opus", "claude-opus-4-2026", "CLAUDE-OPUS-4"] {
        let e = table
            .route(&simple(name), RouteInput::default())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ModelNotFound, "{name}");
    }
    // OpenAI-shaped 404 through the stack
    let h = RouteHandle::new(table);
    let res = send(&mut stack(&h), chat("gpt-5", false)).await;
    assert_eq!(res.status(), 404);
    let v: serde_json::Value = serde_json::from_str(&text(res).await).unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["param"], "model");
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

fn priced(
    provider: &Arc<dyn Provider>,
    model: &str,
    usd_in: f64,
    caps: Capabilities,
) -> Arc<Target> {
    Target::new(provider.clone(), model)
        .with_price(Price::from_usd_per_mtok(usd_in, usd_in * 4.0))
        .with_caps(caps)
        .into_arc()
}

#[tokio::test(start_paused = true)]
async fn tier_picks_cheapest_capable_healthy_target() {
    let a = p("p");
    let no_tools = Capabilities {
        tools: false,
        ..Capabilities::default()
    };
    let small_ctx = Capabilities {
        context_window: Some(1000),
        ..Capabilities::default()
    };
    let cheapest = priced(&a, "cheapest-no-tools", 0.1, no_tools);
    let cheap = priced(&a, "cheap", 0.5, Capabilities::default());
    let mid = priced(&a, "mid-small-ctx", 0.3, small_ctx);
    let dear = priced(&a, "dear", 5.0, Capabilities::default());
    let table = RouteTable::builder()
        .model(ModelRoute::tier(
            "tier:cheap",
            vec![dear.clone(), cheap.clone(), mid.clone(), cheapest.clone()],
        ))
        .build()
        .unwrap();
    let plain = simple("tier:cheap");
    let d = table.route(&plain, RouteInput::default()).unwrap();
    assert_eq!(
        ids(&d),
        [
            "p/cheapest-no-tools",
            "p/mid-small-ctx",
            "p/cheap",
            "p/dear"
        ]
    );

    let tools = parsed(
        r#"{"model":"tier:cheap","tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"user","content":"hi"}]}"#,
    );
    let d = table.route(&tools, RouteInput::default()).unwrap();
    assert_eq!(ids(&d), ["p/mid-small-ctx", "p/cheap", "p/dear"]);

    // a long prompt does not fit the 1000-token window
    let long = parsed(&format!(
        r#"{{"model":"tier:cheap","max_tokens":500,"tools":[{{"type":"function","function":{{"name":"f"}}}}],"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(4000)
    ));
    let d = table.route(&long, RouteInput::default()).unwrap();
    assert_eq!(ids(&d), ["p/cheap", "p/dear"]);

    // an ejected target goes last (Fallback skips it without a call)
    for _ in 0..5 {
        mid.health.on_failure(
            &GatewayError::new(ErrorKind::UpstreamConnect, "refused"),
            Instant::now(),
        );
    }
    let d = table.route(&tools, RouteInput::default()).unwrap();
    assert_eq!(ids(&d), ["p/cheap", "p/dear", "p/mid-small-ctx"]);
    let h = RouteHandle::new(table);
    let res = send(
        &mut stack(&h),
        request(
            r#"{"model":"tier:cheap","tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"user","content":"hi"}]}"#,
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(attempts(&res), "p/cheap/200/0");

    // nothing capable: an explicit 400, not a silent downgrade
    let vision_less = priced(
        &a,
        "text-only",
        0.1,
        Capabilities {
            vision: false,
            ..Capabilities::default()
        },
    );
    let table = RouteTable::builder()
        .model(ModelRoute::tier("tier:text", vec![vision_less]))
        .build()
        .unwrap();
    let img = parsed(
        r#"{"model":"tier:text","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:"}}]}]}"#,
    );
    let e = table.route(&img, RouteInput::default()).unwrap_err();
    assert_eq!(e.status(), 400);
    assert!(e.message().contains("images"), "{}", e.message());
}

#[test]
fn strategies_latency_cheapest_weighted() {
    let a = p("p");
    let fast = t(&a, "fast");
    let slow = t(&a, "slow");
    let now = Instant::now();
    fast.health.on_success(now, Duration::from_millis(100));
    slow.health.on_success(now, Duration::from_millis(900));
    let table = RouteTable::builder()
        .model(ModelRoute::new("lat", vec![slow.clone(), fast.clone()]).strategy(Strategy::Latency))
        .model(
            ModelRoute::new(
                "w",
                vec![
                    Target::new(a.clone(), "w1").with_weight(3).into_arc(),
                    Target::new(a.clone(), "w2").with_weight(1).into_arc(),
                ],
            )
            .strategy(Strategy::Weighted),
        )
        .build()
        .unwrap();
    let d = table.route(&simple("lat"), RouteInput::default()).unwrap();
    assert_eq!(ids(&d), ["p/fast", "p/slow"]);
    let mut first_w1 = 0;
    for _ in 0..4000 {
        let d = table.route(&simple("w"), RouteInput::default()).unwrap();
        assert_eq!(d.targets.len(), 2, "the other target stays as fallback");
        if &*d.targets[0].id == "p/w1" {
            first_w1 += 1;
        }
    }
    assert!((2840..=3160).contains(&first_w1), "{first_w1}");
}

#[test]
fn rules_route_on_request_features() {
    let a = p("p");
    let table = RouteTable::builder()
        .model(ModelRoute::new("auto", vec![t(&a, "default")]))
        .model(ModelRoute::new("vision", vec![t(&a, "vision")]))
        .model(ModelRoute::new("long", vec![t(&a, "long")]))
        .model(ModelRoute::new("batch", vec![t(&a, "batch")]))
        .rule(Rule {
            models: Some(vec![Arc::from("auto")]),
            when: Condition {
                has_images: Some(true),
                ..Condition::default()
            },
            route_to: Arc::from("vision"),
        })
        .rule(Rule {
            models: Some(vec![Arc::from("auto")]),
            when: Condition {
                min_prompt_tokens: Some(1000),
                ..Condition::default()
            },
            route_to: Arc::from("long"),
        })
        .rule(Rule {
            models: None,
            when: Condition {
                tag: Some(Arc::from("batch")),
                ..Condition::default()
            },
            route_to: Arc::from("batch"),
        })
        .build()
        .unwrap();
    let route = |body: &str, h: Option<&HeaderMap>| {
        table
            .route(
                &parsed(body),
                RouteInput {
                    headers: h,
                    key_id: None,
                    ..Default::default()
                },
            )
            .unwrap()
    };
    let d = route(
        r#"{"model":"auto","messages":[{"role":"user","content":"hi"}]}"#,
        None,
    );
    assert_eq!((&*d.model, ids(&d)), ("auto", vec!["p/default".to_owned()]));
    let d = route(
        r#"{"model":"auto","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
        None,
    );
    assert_eq!(&*d.model, "vision");
    let d = route(
        &format!(
            r#"{{"model":"auto","messages":[{{"role":"user","content":"{}"}}]}}"#,
            "y".repeat(5000)
        ),
        None,
    );
    assert_eq!(&*d.model, "long");
    let mut h = HeaderMap::new();
    h.insert(TAG_HEADER, "batch".parse().unwrap());
    let d = route(
        r#"{"model":"vision","messages":[{"role":"user","content":"hi"}]}"#,
        Some(&h),
    );
    assert_eq!(&*d.model, "batch");
    // a rule naming an unknown model is refused at build time
    assert!(
        RouteTable::builder()
            .model(ModelRoute::new("auto", vec![t(&a, "x")]))
            .rule(Rule {
                models: None,
                when: Condition::default(),
                route_to: Arc::from("nope"),
            })
            .build()
            .is_err()
    );
}

#[test]
fn client_controls_obey_the_policy() {
    let a = p("p");
    let build = |policy: RoutePolicy| {
        RouteTable::builder()
            .model(ModelRoute::new("m", vec![t(&a, "m1"), t(&a, "m2")]))
            .model(ModelRoute::new("other", vec![t(&a, "o1"), t(&a, "m2")]))
            .policy(policy)
            .build()
            .unwrap()
    };
    let with_list =
        parsed(r#"{"model":"m","models":["other"],"messages":[{"role":"user","content":"hi"}]}"#);
    let mut off = HeaderMap::new();
    off.insert(FALLBACK_HEADER, "off".parse().unwrap());
    let mut tmo = HeaderMap::new();
    tmo.insert(TIMEOUT_HEADER, "1500".parse().unwrap());
    let input = |h| RouteInput {
        headers: Some(h),
        key_id: None,
        ..Default::default()
    };

    let allow = build(RoutePolicy::default());
    let d = allow.route(&with_list, RouteInput::default()).unwrap();
    assert_eq!(ids(&d), ["p/m1", "p/m2", "p/o1"], "appended, de-duplicated");
    assert!(d.allow_fallback);
    let d = allow.route(&simple("m"), input(&off)).unwrap();
    assert!(!d.allow_fallback);
    let d = allow.route(&simple("m"), input(&tmo)).unwrap();
    assert_eq!(d.client_timeouts.total, Some(Duration::from_millis(1500)));
    let unknown =
        parsed(r#"{"model":"m","models":["nope"],"messages":[{"role":"user","content":"hi"}]}"#);
    assert_eq!(
        allow
            .route(&unknown, RouteInput::default())
            .unwrap_err()
            .kind(),
        ErrorKind::ModelNotFound
    );
    let mut bad = HeaderMap::new();
    bad.insert(FALLBACK_HEADER, "maybe".parse().unwrap());
    assert_eq!(
        allow.route(&simple("m"), input(&bad)).unwrap_err().status(),
        400
    );

    let ignore = build(RoutePolicy {
        client_fallback_list: ClientControl::Ignore,
        client_fallback_off: ClientControl::Ignore,
        client_timeouts: ClientControl::Ignore,
    });
    assert_eq!(
        ids(&ignore.route(&with_list, RouteInput::default()).unwrap()),
        ["p/m1", "p/m2"]
    );
    assert!(
        ignore
            .route(&simple("m"), input(&off))
            .unwrap()
            .allow_fallback
    );
    assert!(
        ignore
            .route(&simple("m"), input(&tmo))
            .unwrap()
            .client_timeouts
            .is_none()
    );

    let reject = build(RoutePolicy {
        client_fallback_list: ClientControl::Reject,
        client_fallback_off: ClientControl::Reject,
        client_timeouts: ClientControl::Reject,
    });
    let e = reject.route(&with_list, RouteInput::default()).unwrap_err();
    assert_eq!(
        (e.status().as_u16(), e.kind()),
        (400, ErrorKind::BadRequest)
    );
    assert_eq!(
        reject
            .route(&simple("m"), input(&off))
            .unwrap_err()
            .status(),
        400
    );
    assert_eq!(
        reject
            .route(&simple("m"), input(&tmo))
            .unwrap_err()
            .status(),
        400
    );
}

#[test]
fn bad_tables_are_refused() {
    let a = p("p");
    assert!(
        RouteTable::builder()
            .model(ModelRoute::new("m", vec![]))
            .build()
            .is_err()
    );
    assert!(
        RouteTable::builder()
            .model(ModelRoute::new("m", vec![t(&a, "x")]))
            .model(ModelRoute::new("m", vec![t(&a, "y")]))
            .build()
            .is_err()
    );
    assert!(
        RouteTable::builder()
            .model(ModelRoute::split(
                "s",
                vec![Variant::new("a", 0, vec![t(&a, "x")])]
            ))
            .build()
            .is_err()
    );
    assert!(
        RouteTable::builder()
            .model(ModelRoute::new("m", vec![t(&a, "x")]))
            .alias("m", "m")
            .build()
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn split_through_the_stack_10000_requests_records_variants() {
    let h = RouteHandle::new(canary());
    let mut svc = stack(&h);
    let mut stable = 0u32;
    for i in 0..10_000 {
        let res = send(&mut svc, chat("canary", false)).await;
        assert_eq!(res.status(), 200, "request {i}");
        let v = res.headers()[VARIANT_HEADER].to_str().unwrap().to_owned();
        let routed = res.extensions().get::<Routed>().expect("Routed");
        assert_eq!(routed.variant.as_deref(), Some(v.as_str()));
        if v == "stable" {
            stable += 1;
        }
    }
    assert!((8800..=9200).contains(&stable), "{stable}");
}

fn dollars(provider: &Arc<dyn Provider>, model: &str, input: f64, output: f64) -> Arc<Target> {
    Target::new(provider.clone(), model)
        .with_price(Price::from_usd_per_mtok(input, output))
        .into_arc()
}

fn with_max_price(v: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(MAX_PRICE_HEADER, v.parse().unwrap());
    h
}

#[test]
fn max_price_keeps_targets_within_the_lowest_threshold() {
    let a = p("p");
    let dear = dollars(&a, "dear", 10.0, 40.0);
    let cheap = dollars(&a, "cheap", 1.0, 4.0);
    let unpriced = t(&a, "unpriced");
    let table = RouteTable::builder()
        .model(ModelRoute::new(
            "m",
            vec![dear.clone(), unpriced.clone(), cheap.clone()],
        ))
        .model(
            ModelRoute::new(
                "capped",
                vec![dear.clone(), unpriced.clone(), cheap.clone()],
            )
            .max_price(MaxPrice::usd(Some(5.0), None).allowing_unpriced(true)),
        )
        .model(ModelRoute::tier(
            "tier:cheap",
            vec![dear.clone(), cheap.clone()],
        ))
        .build()
        .unwrap();
    let route = |model: &str, h: Option<&HeaderMap>, key: Option<MaxPrice>| {
        table.route(
            &simple(model),
            RouteInput {
                headers: h,
                key_id: None,
                key_max_price: key,
            },
        )
    };
    // no threshold: nothing changes
    let d = route("m", None, None).unwrap();
    assert_eq!(ids(&d), ["p/dear", "p/unpriced", "p/cheap"]);
    assert!(d.over_max_price.is_empty() && d.max_price.is_none());
    // a request threshold between the two: the cheap one only, the others recorded
    let h = with_max_price("input=5,output=20");
    let d = route("m", Some(&h), None).unwrap();
    assert_eq!(ids(&d), ["p/cheap"]);
    let over: Vec<_> = d.over_max_price.iter().map(|t| t.id.to_string()).collect();
    assert_eq!(over, ["p/dear", "p/unpriced"]);
    assert_eq!(
        d.max_price,
        Some(MaxPrice::micros(Some(5_000_000), Some(20_000_000)))
    );
    // the route's threshold allows unpriced targets; the header lowers output, not that
    let d = route("capped", None, None).unwrap();
    assert_eq!(ids(&d), ["p/unpriced", "p/cheap"]);
    let h = with_max_price("output=3.5");
    let d = route("capped", Some(&h), None).unwrap();
    assert_eq!(ids(&d), ["p/unpriced"]);
    // a key that does not allow unpriced targets wins
    let d = route("capped", None, Some(MaxPrice::usd(None, Some(100.0)))).unwrap();
    assert_eq!(ids(&d), ["p/cheap"]);
    // a header cannot raise the key's threshold
    let h = with_max_price("input=100,output=100");
    let e = route("m", Some(&h), Some(MaxPrice::usd(Some(0.5), None))).unwrap_err();
    assert_eq!(e.status(), 400);
    // a tier picks the cheapest within the threshold
    let h = with_max_price("input=20");
    let d = route("tier:cheap", Some(&h), None).unwrap();
    assert_eq!(ids(&d), ["p/cheap", "p/dear"]);
    let h = with_max_price("input=0.9");
    let e = route("tier:cheap", Some(&h), None).unwrap_err();
    assert!(
        e.message()
            .contains("`p/cheap` at input 1 USD, output 4 USD"),
        "{}",
        e.message()
    );
}

#[test]
fn nothing_within_max_price_is_a_400_naming_the_limit_and_the_cheapest() {
    let a = p("p");
    let table = RouteTable::builder()
        .model(ModelRoute::new(
            "m",
            vec![
                dollars(&a, "dear", 10.0, 40.0),
                dollars(&a, "mid", 2.0, 8.0),
                t(&a, "free?"),
            ],
        ))
        .model(ModelRoute::new("unpriced", vec![t(&a, "x")]))
        .build()
        .unwrap();
    let h = with_max_price("input=1.5, output=6");
    let input = RouteInput {
        headers: Some(&h),
        ..RouteInput::default()
    };
    let e = table.route(&simple("m"), input).unwrap_err();
    assert_eq!(e.status(), 400);
    let v = e.to_json();
    assert_eq!(v["error"]["code"], "no_target_within_max_price");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let msg = e.message();
    assert!(
        msg.contains("input 1.5 USD, output 6 USD per million tokens"),
        "{msg}"
    );
    assert!(
        msg.contains("`p/mid` at input 2 USD, output 8 USD"),
        "{msg}"
    );
    assert_eq!(
        e.headers()["x-tollgate-attempts"],
        "p/dear/over_max_price/0;p/mid/over_max_price/0;p/free?/over_max_price/0"
    );
    let e = table.route(&simple("unpriced"), input).unwrap_err();
    assert!(
        e.message().contains("no candidate has a known price"),
        "{}",
        e.message()
    );
    // malformed headers name the header
    for bad in [
        "",
        "input",
        "input=-1",
        "input=3;output=4",
        "max=3",
        "input=1,input=2",
    ] {
        let h = with_max_price(bad);
        let e = table
            .route(
                &simple("m"),
                RouteInput {
                    headers: Some(&h),
                    ..RouteInput::default()
                },
            )
            .unwrap_err();
        assert_eq!(e.status(), 400, "{bad:?}");
        assert!(
            e.message().contains(MAX_PRICE_HEADER),
            "{bad:?}: {}",
            e.message()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn fallback_never_reaches_a_target_over_the_threshold() {
    let a = p("a");
    let b = p("b");
    let c = p("c");
    let h = RouteHandle::new(
        RouteTable::builder()
            .model(
                ModelRoute::new(
                    "m",
                    vec![
                        dollars(&a, "status?code=503", 1.0, 1.0),
                        dollars(&b, "ok", 9.0, 9.0),
                        dollars(&c, "status?code=500", 2.0, 2.0),
                    ],
                )
                .max_price(MaxPrice::usd(Some(5.0), Some(5.0))),
            )
            .build()
            .unwrap(),
    );
    let req = chat("m", false);
    let res = send(&mut stack(&h), req).await;
    // the two within it failed; the dear one that would have served is never called
    assert_eq!(res.status(), 503);
    assert_eq!(
        attempts(&res),
        "b/ok/over_max_price/0;a/status?code=503/503/0;c/status?code=500/500/0"
    );
    // a key's threshold comes from the KeyIdentity extension Auth writes
    let mut req = chat("m", false);
    req.extensions_mut().insert(
        crate::auth::KeyIdentity::new("k", "k").with_max_price(MaxPrice::usd(Some(1.5), None)),
    );
    let res = send(&mut stack(&h), req).await;
    assert_eq!(
        attempts(&res),
        "b/ok/over_max_price/0;c/status?code=500/over_max_price/0;a/status?code=503/503/0"
    );
}
