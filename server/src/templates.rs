//! Prompt templates: the standard library of writing jobs (`examples/templates/`, built in) and a server's
//! own (`--templates DIR`). A template is a Markdown file: TOML front matter between `+++` lines (name,
//! description, the fields it asks for, the system prompt, a `[request]` table copied into every request:
//! sampling, `max_tokens`, `response_format`…) and a minijinja body, the user message. `NAME.md` is the
//! English template `NAME`; `NAME.LANG.md` the same job in another language (`NAME.zh`).
//!
//! One renderer for everything: `quire batch --template`, `POST /v1/batches` with a template, and the web
//! page (which asks `/v1/templates/render`).

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// A field a template asks for.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Field {
    pub key: String,
    #[serde(default)]
    pub label: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub placeholder: String,
    /// A longer text (the page shows a text area).
    #[serde(default)]
    pub multiline: bool,
    /// Source code (the page shows it monospaced).
    #[serde(default)]
    pub code: bool,
    /// May be missing or empty (the body tests it with `{% if %}`); every other field must have a value.
    #[serde(default)]
    pub optional: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FrontMatter {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    icon: Option<String>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    request: Map<String, Value>,
    #[serde(default)]
    fields: Vec<Field>,
}

/// Body keys a template cannot set: the messages are what it renders, and a batch never streams.
const NOT_IN_REQUEST: [&str; 4] = ["messages", "prompt", "stream", "stream_options"];

/// A parsed, compiled template.
#[derive(Debug)]
pub struct Template {
    /// `NAME` or `NAME.LANG` (the file's stem).
    pub id: String,
    pub lang: String,
    pub name: String,
    pub description: String,
    pub icon: Option<String>,
    pub system: Option<String>,
    pub request: Map<String, Value>,
    /// Declared fields, then any the body or system prompt uses without declaring (required, no label).
    pub fields: Vec<Field>,
    /// The file as written.
    pub source: String,
    env: Environment<'static>,
}

/// Values for one rendering: a data row or the page's form.
pub type Values = Map<String, Value>;

impl Template {
    /// Parses `text` (a template file) as template `id`; errors say what is wrong and where.
    pub fn parse(id: &str, text: &str) -> Result<Template, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text).replace("\r\n", "\n");
        let rest = text.strip_prefix("+++\n").ok_or_else(|| {
            format!("template '{id}': it must start with a '+++' line opening its TOML front matter")
        })?;
        let (front, body) = match rest.find("\n+++\n") {
            Some(i) => (&rest[..i], &rest[i + 5..]),
            None => match rest.strip_suffix("\n+++") {
                Some(f) => (f, ""),
                None => return Err(format!("template '{id}': the front matter has no closing '+++' line")),
            },
        };
        let fm: FrontMatter =
            toml::from_str(front).map_err(|e| format!("template '{id}': front matter: {}", e.message()))?;
        if let Some(k) = NOT_IN_REQUEST.iter().find(|k| fm.request.contains_key(**k)) {
            return Err(format!("template '{id}': [request] cannot set '{k}'"));
        }
        let body = body.trim_end();
        if body.trim().is_empty() {
            return Err(format!(
                "template '{id}': the body (the user message, after the front matter) is empty"
            ));
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(false);
        let compile = |env: &mut Environment<'static>, name: &'static str, src: &str| {
            env.add_template_owned(name, src.to_string()).map_err(|e| format!("template '{id}': {name}: {e}"))
        };
        compile(&mut env, "body", body)?;
        if let Some(s) = &fm.system {
            compile(&mut env, "system", s)?;
        }
        let mut fields = fm.fields;
        let mut seen: Vec<String> = fields.iter().map(|f| f.key.clone()).collect();
        if let Some(dup) = seen.iter().enumerate().find_map(|(i, k)| seen[..i].contains(k).then_some(k)) {
            return Err(format!("template '{id}': field '{dup}' is declared twice"));
        }
        for part in ["system", "body"] {
            let Ok(t) = env.get_template(part) else { continue };
            let mut used: Vec<String> = t.undeclared_variables(false).into_iter().collect();
            used.sort();
            for k in used {
                if !seen.contains(&k) {
                    seen.push(k.clone());
                    fields.push(Field {
                        label: k.clone(),
                        key: k,
                        placeholder: String::new(),
                        multiline: true,
                        code: false,
                        optional: false,
                    });
                }
            }
        }
        let lang = id.rsplit_once('.').map_or("en", |(_, l)| l).to_string();
        Ok(Template {
            id: id.to_string(),
            lang,
            name: fm.name,
            description: fm.description,
            icon: fm.icon,
            system: fm.system,
            request: fm.request,
            fields,
            source: text.clone(),
            env,
        })
    }

    /// Reads and parses a template file; its id is the file's stem.
    pub fn load(path: &Path) -> Result<Template, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read template {}: {e}", path.display()))?;
        let id = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Template::parse(&id, &text)
    }

    /// The user message (and system prompt) for `values`. A required field that is missing or empty is an
    /// error naming it; an optional one renders as empty.
    pub fn render_messages(&self, values: &Values) -> Result<Vec<Value>, String> {
        self.render(values, false)
    }

    fn render(&self, values: &Values, lenient: bool) -> Result<Vec<Value>, String> {
        let mut ctx = values.clone();
        for f in &self.fields {
            let present = ctx.get(&f.key).is_some_and(|v| match v {
                Value::Null => false,
                Value::String(s) => !s.trim().is_empty(),
                _ => true,
            });
            if !present {
                if !f.optional && !lenient {
                    return Err(if ctx.contains_key(&f.key) {
                        format!("field '{}' is empty", f.key)
                    } else {
                        format!("missing field '{}'", f.key)
                    });
                }
                ctx.insert(f.key.clone(), json!(""));
            }
        }
        let ctx = to_jinja(&Value::Object(ctx));
        let render = |part: &str| -> Result<String, String> {
            let t = self.env.get_template(part).map_err(|e| e.to_string())?;
            let out = t.render(&ctx).map_err(|e| format!("{part}: {e}"))?;
            Ok(out.trim().to_string())
        };
        let mut messages = Vec::new();
        if self.system.is_some() {
            messages.push(json!({"role": "system", "content": render("system")?}));
        }
        messages.push(json!({"role": "user", "content": render("body")?}));
        Ok(messages)
    }

    /// The body for a form being filled in: missing values render as empty, so the preview shows what the
    /// rest of the template says.
    pub fn render_preview(&self, values: &Values) -> Result<Value, String> {
        let mut body = self.request.clone();
        body.insert("messages".into(), Value::Array(self.render(values, true)?));
        Ok(Value::Object(body))
    }

    /// A chat completions body for `values`: the `[request]` settings and the rendered messages.
    pub fn render_body(&self, values: &Values) -> Result<Value, String> {
        let mut body = self.request.clone();
        body.insert("messages".into(), Value::Array(self.render_messages(values)?));
        Ok(Value::Object(body))
    }

    /// What `GET /v1/templates` says of it.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "lang": self.lang, "name": self.name, "description": self.description,
            "icon": self.icon, "system": self.system, "request": self.request, "fields": self.fields,
            "source": self.source,
        })
    }
}

/// A JSON value as minijinja sees it. Not `Value::from_serialize`: with serde_json's arbitrary_precision
/// (which a dependency turns on) numbers would serialize as maps.
fn to_jinja(v: &Value) -> minijinja::Value {
    match v {
        Value::Null => minijinja::Value::from(()),
        Value::Bool(b) => minijinja::Value::from(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => minijinja::Value::from(i),
            (None, Some(f)) => minijinja::Value::from(f),
            _ => minijinja::Value::from(n.to_string()),
        },
        Value::String(s) => minijinja::Value::from(s.as_str()),
        Value::Array(a) => a.iter().map(to_jinja).collect::<Vec<_>>().into(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| (k.clone(), to_jinja(v)))
            .collect::<BTreeMap<String, minijinja::Value>>()
            .into(),
    }
}

/// The built-in templates, compiled into the binary from `examples/templates/`.
const BUILTIN: &[(&str, &str)] = &[
    ("wechat-article", include_str!("../../examples/templates/wechat-article.md")),
    ("wechat-article.zh", include_str!("../../examples/templates/wechat-article.zh.md")),
    ("api-docs", include_str!("../../examples/templates/api-docs.md")),
    ("api-docs.zh", include_str!("../../examples/templates/api-docs.zh.md")),
    ("python-script", include_str!("../../examples/templates/python-script.md")),
    ("python-script.zh", include_str!("../../examples/templates/python-script.zh.md")),
    ("product-description", include_str!("../../examples/templates/product-description.md")),
    ("product-description.zh", include_str!("../../examples/templates/product-description.zh.md")),
    ("email-draft", include_str!("../../examples/templates/email-draft.md")),
    ("email-draft.zh", include_str!("../../examples/templates/email-draft.zh.md")),
    ("report-summary", include_str!("../../examples/templates/report-summary.md")),
    ("report-summary.zh", include_str!("../../examples/templates/report-summary.zh.md")),
    ("faq-from-notes", include_str!("../../examples/templates/faq-from-notes.md")),
    ("faq-from-notes.zh", include_str!("../../examples/templates/faq-from-notes.zh.md")),
];

/// The templates a server or a run knows, by id, in their listing order (built-in first).
pub struct Library {
    templates: BTreeMap<String, (usize, Template)>,
}

impl Library {
    /// The built-in templates.
    pub fn builtin() -> Library {
        let mut lib = Library { templates: BTreeMap::new() };
        for (id, text) in BUILTIN {
            // a broken built-in is caught by the tests, never by a user
            if let Ok(t) = Template::parse(id, text) {
                lib.insert(t);
            }
        }
        lib
    }

    /// The built-in templates and every `*.md` in `dir` (one of the same id replaces the built-in).
    pub fn with_dir(dir: &Path) -> Result<Library, String> {
        let mut lib = Library::builtin();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read the templates dir {}: {e}", dir.display()))?;
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .collect();
        paths.sort();
        for p in paths {
            lib.insert(Template::load(&p)?);
        }
        Ok(lib)
    }

    fn insert(&mut self, t: Template) {
        let order = self.templates.get(&t.id).map_or(self.templates.len(), |(o, _)| *o);
        self.templates.insert(t.id.clone(), (order, t));
    }

    pub fn get(&self, id: &str) -> Option<&Template> {
        self.templates.get(id).map(|(_, t)| t)
    }

    /// Every template, built-in first, in the order they were added.
    pub fn all(&self) -> Vec<&Template> {
        let mut v: Vec<&(usize, Template)> = self.templates.values().collect();
        v.sort_by_key(|(o, _)| *o);
        v.into_iter().map(|(_, t)| t).collect()
    }

    /// A template by id, or else the file at that path.
    pub fn resolve(&self, name: &str) -> Result<Template, String> {
        let path = Path::new(name);
        if path.is_file() {
            return Template::load(path);
        }
        match self.get(name) {
            Some(t) => Template::parse(&t.id, &t.source),
            None => {
                let ids: Vec<&str> = self.all().iter().map(|t| t.id.as_str()).collect();
                Err(format!("no template '{name}' (a file path or one of: {})", ids.join(", ")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> Values {
        pairs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect()
    }

    #[test]
    fn every_builtin_parses_and_renders_each_field() {
        let lib = Library::builtin();
        assert_eq!(lib.all().len(), BUILTIN.len(), "every built-in template parses");
        for (id, text) in BUILTIN {
            let t = Template::parse(id, text).unwrap();
            assert!(
                t.fields.iter().all(|f| !f.label.is_empty() && f.label != f.key),
                "{id}: every field declared"
            );
            let vals: Values =
                t.fields.iter().map(|f| (f.key.clone(), json!(format!("<{}>", f.key)))).collect();
            let body = t.render_body(&vals).unwrap();
            let user =
                body["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_string();
            for f in &t.fields {
                assert!(user.contains(&format!("<{}>", f.key)), "{id}: {} in the message", f.key);
            }
            assert!(body["max_tokens"].as_u64().is_some(), "{id}: sets max_tokens");
            // each language's version asks for the same fields
            let base = id.split('.').next().unwrap();
            let en = Template::parse(base, BUILTIN.iter().find(|(i, _)| *i == base).unwrap().1).unwrap();
            let keys = |t: &Template| t.fields.iter().map(|f| f.key.clone()).collect::<Vec<_>>();
            assert_eq!(keys(&t), keys(&en), "{id}");
        }
        assert_eq!(lib.get("product-description.zh").unwrap().lang, "zh");
    }

    #[test]
    fn missing_empty_and_optional_fields() {
        let t = Template::parse(
            "t",
            "+++\nname = \"T\"\nsystem = \"You write for {{ brand }}.\"\n[request]\ntemperature = 0.5\n\
             [[fields]]\nkey = \"notes\"\noptional = true\n+++\nAbout {{ product }}.{% if notes %} Notes: {{ notes }}{% endif %}\n",
        )
        .unwrap();
        let keys: Vec<&str> = t.fields.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(keys, ["notes", "brand", "product"], "used fields are found");
        let body =
            t.render_body(&values(&[("brand", "Acme"), ("product", "a \"kettle\", 1,5 L 水壶")])).unwrap();
        assert_eq!(
            body,
            json!({"temperature": 0.5, "messages": [
                {"role": "system", "content": "You write for Acme."},
                {"role": "user", "content": "About a \"kettle\", 1,5 L 水壶."}]})
        );
        let with_notes =
            t.render_messages(&values(&[("brand", "A"), ("product", "p"), ("notes", "n")])).unwrap();
        assert_eq!(with_notes[1]["content"], "About p. Notes: n");
        assert_eq!(t.render_body(&values(&[("brand", "A")])).unwrap_err(), "missing field 'product'");
        assert_eq!(
            t.render_body(&values(&[("brand", "A"), ("product", " ")])).unwrap_err(),
            "field 'product' is empty"
        );
    }

    #[test]
    fn bad_templates_say_why() {
        let e = |s: &str| Template::parse("x", s).unwrap_err();
        assert!(e("no front matter").contains("must start with a '+++'"));
        assert!(e("+++\nname = \"a\"\nbody").contains("no closing"));
        assert!(e("+++\nname = \"a\"\ncolour = 1\n+++\nhi").contains("unknown field"));
        assert!(e("+++\ndescription = \"a\"\n+++\nhi").contains("missing field `name`"));
        assert!(e("+++\nname = \"a\"\n[request]\nstream = true\n+++\nhi").contains("cannot set 'stream'"));
        assert!(e("+++\nname = \"a\"\n+++\n  \n").contains("body"));
        assert!(e("+++\nname = \"a\"\n+++\n{% if x %}open").contains("body"));
        let dup = "+++\nname = \"a\"\n[[fields]]\nkey = \"k\"\n[[fields]]\nkey = \"k\"\n+++\n{{ k }}";
        assert!(e(dup).contains("declared twice"));
    }
}
