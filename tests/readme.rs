//! Issue 10, acceptance 7: the README tells the truth about the configuration.
//!
//! - Every field of every config struct is in the README's "Configuration reference". The list
//!   of fields comes from the code itself: `Config`'s own `Deserialize` impl is driven by a
//!   tracing deserializer that records each struct serde asks for, with its field names (the
//!   same names `deny_unknown_fields` accepts) and the TOML path where it sits. A struct read
//!   through `#[serde(flatten)]` has no field list in serde; its fields come from its
//!   declaration in `src/`. A field added to the code without a row in the reference fails
//!   here, naming the field; a row for a field that does not exist fails too.
//! - The README's complete example, exactly as written, with the environment it names, starts
//!   the gateway binary and serves a request through it over a real socket; every other TOML
//!   block of the README starts too.

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

const README: &str = include_str!("../README.md");
const DEFAULT_TOML: &str = tollgate::config::DEFAULT_CONFIG;

// ---------------------------------------------------------------------------------------------
// The config's shape, from serde.

/// What the tracer learned: every struct, where it sits, and its fields.
#[derive(Default, Debug)]
struct Shape {
    /// struct name -> its fields (TOML keys), in declaration order
    fields: BTreeMap<String, Vec<String>>,
    /// struct name -> the paths where it sits (`auth.keys[]`, `models.NAME.timeouts`)
    paths: BTreeMap<String, BTreeSet<String>>,
    /// path -> the structs read there (two when one is flattened into the other)
    at: BTreeMap<String, BTreeSet<String>>,
    /// paths of tables with names of your choosing (`providers`, `limits.models`)
    maps: BTreeSet<String>,
}

impl Shape {
    fn record(&mut self, path: &str, name: &str, fields: Vec<String>) {
        self.fields.entry(name.to_owned()).or_insert(fields);
        self.paths
            .entry(name.to_owned())
            .or_default()
            .insert(path.to_owned());
        self.at
            .entry(path.to_owned())
            .or_default()
            .insert(name.to_owned());
    }

    /// Whether `key` is a field of a struct read at `path`.
    fn has(&self, path: &str, key: &str) -> bool {
        self.at.get(path).is_some_and(|names| {
            names
                .iter()
                .any(|n| self.fields[n].iter().any(|f| f == key))
        })
    }
}

type Error = de::value::Error;

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A deserializer that answers every question serde asks with a harmless value, and records
/// the structs, fields and maps it is asked for.
struct Tracer<'a> {
    path: String,
    shape: &'a RefCell<Shape>,
}

impl<'a> Tracer<'a> {
    fn at(&self, path: String) -> Tracer<'a> {
        Tracer {
            path,
            shape: self.shape,
        }
    }
}

/// A table with the given keys, each value traced at `path.key`.
struct Table<'a> {
    tracer: Tracer<'a>,
    keys: Vec<String>,
    next: usize,
}

impl<'de> MapAccess<'de> for Table<'_> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.keys.get(self.next) {
            Some(k) => seed.deserialize(k.as_str().into_deserializer()).map(Some),
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let key = &self.keys[self.next];
        self.next += 1;
        seed.deserialize(self.tracer.at(join(&self.tracer.path, key)))
    }
}

/// An array of one element, traced at `path[]`.
struct One<'a> {
    tracer: Option<Tracer<'a>>,
}

impl<'de> SeqAccess<'de> for One<'_> {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.tracer.take() {
            Some(t) => {
                let path = format!("{}[]", t.path);
                seed.deserialize(t.at(path)).map(Some)
            }
            None => Ok(None),
        }
    }
}

impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        let keys: Vec<String> = fields.iter().map(|f| (*f).to_owned()).collect();
        self.shape
            .borrow_mut()
            .record(&self.path, name, keys.clone());
        v.visit_map(Table {
            tracer: self,
            keys,
            next: 0,
        })
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let expecting = format!("{}", &v as &dyn de::Expected);
        let keys = match expecting.strip_prefix("struct ") {
            // A struct with a `#[serde(flatten)]` field: serde reads it as a map and has no
            // list of its fields; its declaration gives them.
            Some(name) => {
                let mut keys = Vec::new();
                for (owner, fields) in declared_fields(name) {
                    keys.extend(fields.iter().cloned());
                    self.shape.borrow_mut().record(&self.path, &owner, fields);
                }
                keys
            }
            None => {
                self.shape.borrow_mut().maps.insert(self.path.clone());
                vec!["NAME".to_owned()]
            }
        };
        v.visit_map(Table {
            tracer: self,
            keys,
            next: 0,
        })
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_some(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_seq(One { tracer: Some(self) })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_enum(variants[0].into_deserializer())
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_bool(false)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u64(0)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u64(0)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u64(0)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u64(0)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i64(0)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i64(0)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i64(0)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i64(0)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_f64(0.0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_f64(0.0)
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_str("")
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_str("")
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char bytes byte_buf unit unit_struct tuple tuple_struct identifier ignored_any
    }
}

/// The fields of `struct NAME` as declared in `src/` (for structs serde reads through
/// `#[serde(flatten)]`), grouped by the struct that declares them: a flattened field is
/// replaced by its own type's fields.
fn declared_fields(name: &str) -> Vec<(String, Vec<String>)> {
    let decl = find_struct(name)
        .unwrap_or_else(|| panic!("struct {name} is read flattened, and src/ does not declare it"));
    let mut own = Vec::new();
    let mut out = Vec::new();
    let mut attrs = String::new();
    for line in decl.lines().map(str::trim) {
        if line.starts_with("#[") {
            attrs.push_str(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("pub ") {
            if let Some((field, ty)) = rest.split_once(':') {
                let ty = ty.trim().trim_end_matches(',');
                if attrs.contains("flatten") {
                    out.extend(declared_fields(ty));
                } else if !attrs.contains("skip") {
                    own.push(field.trim().to_owned());
                }
            }
            attrs.clear();
        }
    }
    out.insert(0, (name.to_owned(), own));
    out
}

/// The body of `pub struct NAME { ... }` in any file under `src/`.
fn find_struct(name: &str) -> Option<String> {
    let needle = format!("pub struct {name} {{");
    let mut stack = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&p).ok()?;
                if let Some(i) = text.find(&needle) {
                    let body = &text[i + needle.len()..];
                    let end = body.find("\n}").unwrap_or(body.len());
                    return Some(body[..end].to_owned());
                }
            }
        }
    }
    None
}

fn shape() -> Shape {
    let shape = RefCell::new(Shape::default());
    tollgate::config::Config::deserialize(Tracer {
        path: String::new(),
        shape: &shape,
    })
    .expect("the tracer answers every question serde asks");
    shape.into_inner()
}

// ---------------------------------------------------------------------------------------------
// The README's reference.

/// `(heading paths, documented field names)` for every `####` table of the reference.
fn reference() -> Vec<(Vec<String>, BTreeSet<String>)> {
    let start = README
        .find("## Configuration reference")
        .expect("README.md has a \"## Configuration reference\" section");
    let body = &README[start + 3..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    let mut out: Vec<(Vec<String>, BTreeSet<String>)> = Vec::new();
    for line in body.lines() {
        if let Some(h) = line.strip_prefix("#### ") {
            let paths = if h.trim() == "top level" {
                vec![String::new()]
            } else {
                code_spans(h)
            };
            out.push((paths, BTreeSet::new()));
        } else if let (Some(cell), Some(last)) = (line.strip_prefix("| `"), out.last_mut()) {
            let first = cell.split(" |").next().unwrap_or("");
            last.1.extend(code_spans(&format!("`{first}")));
        }
    }
    out
}

fn code_spans(s: &str) -> Vec<String> {
    s.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

#[test]
fn every_config_field_is_in_the_readme_reference() {
    let shape = shape();
    let reference = reference();
    let mut missing = Vec::new();
    for (name, fields) in &shape.fields {
        let paths = &shape.paths[name];
        for f in fields {
            let documented = reference
                .iter()
                .any(|(h, doc)| doc.contains(f) && h.iter().any(|p| paths.contains(p)));
            if !documented {
                let path = paths.iter().next().unwrap();
                let heading = if path.is_empty() {
                    "top level".to_owned()
                } else {
                    format!("`{path}`")
                };
                missing.push(format!(
                    "config field `{}` (struct {name}) is not documented: add a row \
                     \"| `{f}` | type | default | meaning |\" under \"#### {heading}\"",
                    join(path, f)
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "README.md, \"## Configuration reference\":\n{}",
        missing.join("\n")
    );

    // and every row is a real field
    let mut unknown = Vec::new();
    for (paths, doc) in &reference {
        for p in paths {
            if !shape.at.contains_key(p) {
                unknown.push(format!("heading path `{p}` is not a table of the config"));
            }
        }
        for f in doc {
            if !paths.iter().any(|p| shape.has(p, f)) {
                unknown.push(format!("`{f}` under {paths:?} is not a config field"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "README.md reference:\n{}",
        unknown.join("\n")
    );
}

/// Every key of `text` (a config file) is a field the tracer found, at its path: the tracer's
/// picture of the config is the one the parser has.
fn keys_are_traced(shape: &Shape, path: &str, table: &toml::Table, file: &str) {
    for (k, v) in table {
        let (key_path, is_field) = if shape.maps.contains(path) {
            (join(path, "NAME"), true)
        } else {
            (join(path, k), shape.has(path, k))
        };
        assert!(
            is_field,
            "{file}: `{}` is not a traced config field",
            join(path, k)
        );
        match v {
            toml::Value::Table(t) => keys_are_traced(shape, &key_path, t, file),
            toml::Value::Array(items) => {
                for item in items {
                    if let toml::Value::Table(t) = item {
                        keys_are_traced(shape, &format!("{key_path}[]"), t, file);
                    }
                }
            }
            _ => {}
        }
    }
}

fn toml_blocks() -> Vec<&'static str> {
    README
        .split("```toml\n")
        .skip(1)
        .map(|b| &b[..b.find("```").expect("closed block")])
        .collect()
}

#[test]
fn the_embedded_default_and_the_readme_blocks_use_only_traced_fields() {
    let shape = shape();
    for (text, file) in std::iter::once((DEFAULT_TOML, "src/config/default.toml"))
        .chain(toml_blocks().into_iter().map(|b| (b, "README.md")))
    {
        let table: toml::Table = text.parse().unwrap();
        keys_are_traced(&shape, "", &table, file);
    }
}

// ---------------------------------------------------------------------------------------------
// The examples start.

const EXAMPLE_KEY: &str = "sk-tg-example-team-a";

/// `${NAME}` and `${NAME:-default}` references in `text`.
fn env_names(text: &str) -> BTreeSet<String> {
    text.split("${")
        .skip(1)
        .filter_map(|r| r.split('}').next())
        .map(|r| r.split(":-").next().unwrap_or(r).to_owned())
        .collect()
}

fn complete_example() -> &'static str {
    let at = README.find("## Configuration\n").expect("## Configuration");
    let rest = &README[at..];
    let a = rest.find("```toml\n").expect("a toml block") + "```toml\n".len();
    &rest[a..a + rest[a..].find("```").unwrap()]
}

#[tokio::test]
async fn the_complete_example_starts_as_written_and_serves() {
    let block = complete_example();
    let mut up = common::ScriptedUpstream::start().await;
    let names = env_names(block);
    assert!(
        names.contains("LOCAL_LLM_URL"),
        "the complete example names its self-hosted server's URL: {names:?}"
    );
    let dir = std::env::temp_dir().join(format!("tollgate-readme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = up.base_url();
    let gw = common::GatewayProcess::start_with(block, |cmd| {
        for n in &names {
            match n.as_str() {
                "LOCAL_LLM_URL" => cmd.env(n, &base),
                _ => cmd.env(n, format!("test-value-of-{n}")),
            };
        }
        cmd.current_dir(&dir);
    });

    let auth = format!("Bearer {EXAMPLE_KEY}");
    let addr = gw.addr;
    let call = tokio::spawn(async move {
        common::chat(
            addr,
            r#"{"model":"auto","messages":[{"role":"user","content":"hi"}]}"#,
            &[("authorization", auth.as_str())],
        )
        .await
    });
    let ex = up.next().await;
    assert_eq!(ex.path, "/v1/chat/completions");
    assert_eq!(ex.json()["model"], "meta-llama/Llama-3.1-8B-Instruct");
    ex.respond(
        200,
        &[("content-type", "application/json")],
        r#"{"id":"c1","object":"chat.completion","created":1,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"message":{"role":"assistant","content":"hello from the README"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":4,"total_tokens":9}}"#,
    );
    let res = call.await.unwrap();
    assert_eq!(res.status, 200);
    let body = res.json().await;
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "hello from the README"
    );

    // the key in the example is the one its hash says; a wrong one is refused
    let res = common::chat(
        addr,
        r#"{"model":"auto","messages":[{"role":"user","content":"hi"}]}"#,
        &[("authorization", "Bearer sk-tg-example-team-b")],
    )
    .await;
    assert_eq!(res.status, 401);
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn every_readme_config_block_starts() {
    let blocks = toml_blocks();
    assert!(!blocks.is_empty());
    for (i, block) in blocks.iter().enumerate() {
        let dir = std::env::temp_dir().join(format!("tollgate-readme-{}-{i}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let names = env_names(block);
        let gw = common::GatewayProcess::start_with(block, |cmd| {
            for n in &names {
                match n.as_str() {
                    // a key file, read at start: the throwaway test service account
                    "GOOGLE_APPLICATION_CREDENTIALS" => cmd.env(
                        n,
                        concat!(
                            env!("CARGO_MANIFEST_DIR"),
                            "/tests/fixtures/vertex-test-service-account.json"
                        ),
                    ),
                    _ => cmd.env(n, format!("http://127.0.0.1:9/test-value-of-{n}")),
                };
            }
            cmd.current_dir(&dir);
        });
        let res = common::send(gw.addr, "GET", "/healthz", &[], "").await;
        assert_eq!(res.status, 200, "README toml block {i} serves");
        drop(gw);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
