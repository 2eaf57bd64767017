//! `GET /v1/responses/{id}/input_items`: the input items of a stored response, one page at a
//! time, as OpenAI lists them (`{"object": "list", "data", "first_id", "last_id",
//! "has_more"}`; query `limit` 1..=100 (default 20), `order` `asc` | `desc` (default `desc`),
//! `after` and `before` item ids; `include` is accepted and changes nothing: stored items are
//! kept whole).
//!
//! The input items of a response are every item the model was given: the conversation
//! continued through `previous_response_id` (earlier inputs and outputs), then the request's
//! own `input`. A record's conversation is exactly that followed by the response's output.

// The listing is served by the gateway (feature `gateway`); the layers alone only name items.
#![cfg_attr(not(feature = "gateway"), allow(dead_code))]

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::StoredResponse;
use crate::error::GatewayError;
use crate::query;

/// The parameters a listing reads (an escape error names one of them).
const PARAMS: [&str; 4] = ["limit", "order", "after", "before"];

/// Most items one page lists.
const MAX_LIMIT: usize = 100;
/// Items a page lists unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 20;

/// The query of an input-items listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ItemsQuery {
    limit: usize,
    desc: bool,
    after: Option<String>,
    before: Option<String>,
}

fn bad(msg: String, param: &'static str) -> GatewayError {
    GatewayError::bad_request(msg, Some(param))
}

impl ItemsQuery {
    /// Read the URI query (`None`: the defaults). Unknown parameters are ignored.
    pub(crate) fn parse(query: Option<&str>) -> Result<ItemsQuery, GatewayError> {
        let mut q = ItemsQuery {
            limit: DEFAULT_LIMIT,
            desc: true,
            after: None,
            before: None,
        };
        for (key, value) in query::pairs(query.unwrap_or("")) {
            let value = match (key, value) {
                (_, Some(v)) => v,
                ("limit" | "order" | "after" | "before", None) => {
                    let param = PARAMS
                        .iter()
                        .find(|p| **p == key)
                        .copied()
                        .unwrap_or("query");
                    return Err(bad(format!("Invalid escape in '{param}'."), param));
                }
                (_, None) => continue,
            };
            match key {
                "limit" => {
                    q.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            bad(
                                format!(
                                    "Invalid 'limit': {}; it must be an integer from 1 to {MAX_LIMIT}.",
                                    query::echo(&value)
                                ),
                                "limit",
                            )
                        })?;
                }
                "order" => {
                    q.desc = match value.as_str() {
                        "desc" => true,
                        "asc" => false,
                        _ => {
                            return Err(bad(
                                format!(
                                    "Invalid 'order': {}; it must be 'asc' or 'desc'.",
                                    query::echo(&value)
                                ),
                                "order",
                            ));
                        }
                    }
                }
                "after" => q.after = Some(value).filter(|v| !v.is_empty()),
                "before" => q.before = Some(value).filter(|v| !v.is_empty()),
                _ => {}
            }
        }
        Ok(q)
    }
}

/// The id prefix of an item of `type` `ty`.
fn id_prefix(ty: Option<&str>) -> &'static str {
    match ty {
        None | Some("message") => "msg",
        Some("function_call") => "fc",
        Some("function_call_output") => "fco",
        Some("reasoning") => "rs",
        Some(_) => "item",
    }
}

/// Give every item without an `id` one, `{prefix}_{base}_{n}`: `prefix` by its type (`msg`,
/// `fc`, `fco`, `rs`, `item`), `base` the id of the response they belong to without `resp_`,
/// `n` the item's position. Items that have an id keep it.
pub(crate) fn name_items(items: &mut [Value], response_id: &str) {
    let base = response_id.strip_prefix("resp_").unwrap_or(response_id);
    for (n, item) in items.iter_mut().enumerate() {
        let Some(m) = item.as_object_mut() else {
            continue;
        };
        if m.get("id").is_some_and(Value::is_string) {
            continue;
        }
        let prefix = id_prefix(m.get("type").and_then(Value::as_str));
        m.insert("id".into(), Value::from(format!("{prefix}_{base}_{n}")));
    }
}

/// An input item as the listing shows it: a message always `type: message` with a `status`,
/// its string `content` as one `input_text` part (`output_text` for the assistant's).
fn listed(item: Value) -> Value {
    let Value::Object(mut m) = item else {
        return item;
    };
    if !matches!(
        m.get("type").and_then(Value::as_str),
        None | Some("message")
    ) {
        return Value::Object(m);
    }
    m.insert("type".into(), Value::from("message"));
    if let Some(Value::String(text)) = m.get("content") {
        let part = match m.get("role").and_then(Value::as_str) {
            Some("assistant") => json!({"type": "output_text", "text": text, "annotations": []}),
            _ => json!({"type": "input_text", "text": text}),
        };
        m.insert("content".into(), json!([part]));
    }
    m.entry("status")
        .or_insert_with(|| Value::from("completed"));
    Value::Object(m)
}

/// The input items of `record`: its conversation without the response's own output (which
/// ends it), each with an id.
fn input_items(record: &StoredResponse) -> Result<Vec<Value>, GatewayError> {
    let unreadable = || GatewayError::internal("a stored response is not readable");
    let mut items: Vec<Value> =
        serde_json::from_slice(&record.conversation).map_err(|_| unreadable())?;
    let response: Map<String, Value> =
        serde_json::from_slice(&record.response).map_err(|_| unreadable())?;
    if let Some(out) = response.get("output").and_then(Value::as_array) {
        let keep = items.len().saturating_sub(out.len());
        if !out.is_empty() && items[keep..] == out[..] {
            items.truncate(keep);
        }
    }
    name_items(&mut items, &record.id);
    Ok(items.into_iter().map(listed).collect())
}

/// One page of the input items of `record`, as the list object.
pub(crate) fn list(record: &StoredResponse, q: &ItemsQuery) -> Result<Bytes, GatewayError> {
    let mut items = input_items(record)?;
    if q.desc {
        items.reverse();
    }
    let at = |id: &str, param: &'static str| {
        items
            .iter()
            .position(|i| i.get("id").and_then(Value::as_str) == Some(id))
            .ok_or_else(|| {
                bad(
                    format!(
                        "No input item with id {} in response '{}'.",
                        query::echo(id),
                        record.id
                    ),
                    param,
                )
            })
    };
    let start = match &q.after {
        Some(id) => at(id, "after")? + 1,
        None => 0,
    };
    let end = match &q.before {
        Some(id) => at(id, "before")?,
        None => items.len(),
    };
    let window = items.get(start..end).unwrap_or_default();
    let has_more = window.len() > q.limit;
    // `before` alone pages backwards: the items just before it.
    let data = match (&q.after, &q.before) {
        (None, Some(_)) => &window[window.len().saturating_sub(q.limit)..],
        _ => &window[..window.len().min(q.limit)],
    };
    let id_of = |i: Option<&Value>| i.and_then(|i| i.get("id")).cloned();
    let doc = json!({
        "object": "list",
        "data": data,
        "first_id": id_of(data.first()),
        "last_id": id_of(data.last()),
        "has_more": has_more,
    });
    serde_json::to_vec(&doc)
        .map(Bytes::from)
        .map_err(|e| GatewayError::internal(format!("serializing the item list: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(conversation: &str, output: &str) -> StoredResponse {
        StoredResponse::with_id(
            "resp_abc",
            Bytes::from(format!(r#"{{"id":"resp_abc","output":{output}}}"#)),
            Bytes::from(conversation.to_owned()),
            "m",
            "p/m",
        )
    }

    fn page(r: &StoredResponse, query: &str) -> Value {
        let q = ItemsQuery::parse(Some(query)).unwrap();
        serde_json::from_slice(&list(r, &q).unwrap()).unwrap()
    }

    fn ids(v: &Value) -> Vec<&str> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect()
    }

    const OUT: &str = r#"[{"id":"msg_out","type":"message","role":"assistant","content":[]}]"#;

    fn five() -> StoredResponse {
        let conv = r#"[{"role":"user","content":"a"},{"id":"msg_x","type":"message","role":"assistant","content":"b"},
            {"type":"function_call","call_id":"c","name":"f","arguments":"{}"},
            {"type":"function_call_output","call_id":"c","output":"r"},{"role":"user","content":"e"},
            {"id":"msg_out","type":"message","role":"assistant","content":[]}]"#;
        record(conv, OUT)
    }

    #[test]
    fn the_output_is_not_an_input_and_items_get_ids_and_message_shapes() {
        let v = page(&five(), "order=asc");
        assert_eq!(
            ids(&v),
            ["msg_abc_0", "msg_x", "fc_abc_2", "fco_abc_3", "msg_abc_4"]
        );
        assert_eq!(
            v["data"][0],
            json!({"id": "msg_abc_0", "type": "message", "role": "user", "status": "completed",
                   "content": [{"type": "input_text", "text": "a"}]})
        );
        assert_eq!(v["data"][1]["content"][0]["type"], "output_text");
        assert_eq!(v["first_id"], "msg_abc_0");
        assert_eq!(v["last_id"], "msg_abc_4");
        assert_eq!(v["has_more"], false);
        assert_eq!(v["object"], "list");
    }

    #[test]
    fn pages_in_both_orders_with_after_and_before() {
        let r = five();
        let v = page(&r, "");
        assert_eq!(ids(&v)[0], "msg_abc_4", "desc by default");
        let v = page(&r, "limit=2");
        assert_eq!(ids(&v), ["msg_abc_4", "fco_abc_3"]);
        assert_eq!(v["has_more"], true);
        let v = page(&r, "limit=2&after=fco_abc_3");
        assert_eq!(ids(&v), ["fc_abc_2", "msg_x"]);
        assert_eq!(v["has_more"], true);
        let v = page(&r, "limit=2&after=msg_x");
        assert_eq!(ids(&v), ["msg_abc_0"]);
        assert_eq!(v["has_more"], false);
        let v = page(&r, "order=asc&limit=2&before=msg_abc_4");
        assert_eq!(ids(&v), ["fc_abc_2", "fco_abc_3"]);
        assert_eq!(v["has_more"], true);
        let v = page(&r, "order=asc&after=msg_abc_0&before=fco_abc_3&include=x");
        assert_eq!(ids(&v), ["msg_x", "fc_abc_2"]);
        let v = page(&r, "order=asc&after=fco_abc_3&before=msg_x");
        assert_eq!(v["data"], json!([]));
        assert_eq!(v["first_id"], Value::Null);
    }

    #[test]
    fn a_conversation_that_does_not_end_with_the_output_is_all_input() {
        let r = record(r#"[{"role":"user","content":"hi"}]"#, OUT);
        assert_eq!(ids(&page(&r, "")), ["msg_abc_0"]);
    }

    #[test]
    fn bad_queries_are_400s_naming_the_parameter() {
        for (q, param) in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=x", "limit"),
            ("order=up", "order"),
            ("order=%zz", "order"),
            ("after=%E2%82", "after"),
        ] {
            let e = ItemsQuery::parse(Some(q)).unwrap_err();
            assert_eq!(e.status(), 400, "{q}");
            assert_eq!(e.to_json()["error"]["param"], param, "{q}");
        }
        let q = ItemsQuery::parse(Some("after=msg_nope")).unwrap();
        let e = list(&five(), &q).unwrap_err();
        assert_eq!(e.to_json()["error"]["param"], "after");
        assert_eq!(ItemsQuery::parse(Some("limit=100")).unwrap().limit, 100);
        let q = ItemsQuery::parse(Some("after=msg%5Fx&foo")).unwrap();
        assert_eq!(q.after.as_deref(), Some("msg_x"));
        // A client's long value comes back as a short prefix only.
        let long = format!("order={}", "x".repeat(100_000));
        let e = ItemsQuery::parse(Some(&long)).unwrap_err();
        assert!(e.message().len() < 200, "{}", e.message().len());
        let q = ItemsQuery::parse(Some(&format!("after={}", "y".repeat(100_000)))).unwrap();
        let e = list(&five(), &q).unwrap_err();
        assert!(e.message().len() < 200, "{}", e.message().len());
    }
}
