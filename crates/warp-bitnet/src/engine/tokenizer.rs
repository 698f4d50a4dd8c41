//! Text to token ids and back (`tokenizer.json` through the `tokenizers` crate), and the chat
//! template of `tokenizer_config.json` (or `chat_template.jinja`) through `minijinja`.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// A model's tokenizer and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos: Option<(String, u32)>,
    eos_token: Option<String>,
    eos_ids: Vec<u32>,
}

fn tok_err(file: &str, e: impl std::fmt::Display) -> Error {
    Error::BadFile(format!("{file}: {e}"))
}

/// A special token in `tokenizer_config.json`: a string or an `AddedToken` object.
fn token_text(v: &Value) -> Option<String> {
    v.as_str()
        .or_else(|| v["content"].as_str())
        .map(str::to_string)
}

impl Tokenizer {
    /// The tokenizer of a Hugging Face folder, or `None` if it has no `tokenizer.json`.
    /// `eos_ids` (from config.json) are end-of-sequence tokens besides `tokenizer_config.json`'s.
    pub fn from_dir(dir: &Path, bos_id: Option<u32>, eos_ids: &[u32]) -> Result<Option<Self>> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Ok(None);
        }
        let name = path.display().to_string();
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| tok_err(&name, e))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path)?;
            serde_json::from_str(&text).map_err(|e| tok_err(&cfg_path.display().to_string(), e))?
        } else {
            Value::Null
        };
        let jinja = dir.join("chat_template.jinja");
        let chat_template = if jinja.exists() {
            Some(std::fs::read_to_string(&jinja)?)
        } else {
            template_of(&cfg["chat_template"])
        };
        let (bos, eos) = (token_text(&cfg["bos_token"]), token_text(&cfg["eos_token"]));
        Self::new(inner, chat_template, bos, eos, bos_id, eos_ids).map(Some)
    }

    /// Wraps a `tokenizers` tokenizer; special tokens given by text are looked up in its vocabulary.
    pub(crate) fn new(
        inner: tokenizers::Tokenizer,
        chat_template: Option<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
        bos_id: Option<u32>,
        eos_ids: &[u32],
    ) -> Result<Self> {
        let bos = match (bos_token, bos_id) {
            (Some(t), _) => inner.token_to_id(&t).map(|id| (t, id)),
            (None, Some(id)) => inner.id_to_token(id).map(|t| (t, id)),
            (None, None) => None,
        };
        let mut ids = eos_ids.to_vec();
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let eos_token = eos_token.or_else(|| ids.first().and_then(|&id| inner.id_to_token(id)));
        Ok(Self {
            inner,
            chat_template,
            bos,
            eos_token,
            eos_ids: ids,
        })
    }

    /// Token ids of `text`; `add_special_tokens` adds what the tokenizer's post-processor adds
    /// (e.g. BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Unsupported {
                what: "text",
                detail: format!("cannot tokenize: {e}"),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let vocab = self.inner.get_vocab_size(true);
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Unsupported {
                what: "token id",
                detail: format!("{id} is not in the tokenizer's vocabulary of {vocab}"),
            });
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Unsupported {
                what: "token ids",
                detail: format!("cannot decode: {e}"),
            })
    }

    /// Renders the chat template for `messages` (`(role, content)` pairs); with
    /// `add_generation_prompt`, ends with the assistant's turn opening as transformers does.
    pub fn apply_chat_template(
        &self,
        messages: &[(String, String)],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::Unsupported {
                what: "chat",
                detail: "this model has no chat template (tokenizer_config.json `chat_template`)"
                    .into(),
            })?;
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        let bad = |e: minijinja::Error| Error::Unsupported {
            what: "chat template",
            detail: e.to_string(),
        };
        env.add_template("chat", template).map_err(bad)?;
        let msgs: Vec<Value> = messages
            .iter()
            .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
            .collect();
        let ctx = minijinja::context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_ref().map(|(t, _)| t.clone()).unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        };
        env.get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(bad)
    }

    /// Tokens that end a sequence.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|(_, id)| *id)
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// `chat_template` as a string, or the `"default"` one of a list of named templates.
fn template_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => items
            .iter()
            .find(|t| t["name"] == "default")
            .or(items.first())
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::models::wordlevel::WordLevel;

    fn tiny() -> Tokenizer {
        let vocab = [
            ("<s>", 0),
            ("</s>", 1),
            ("hello", 2),
            ("world", 3),
            ("[UNK]", 4),
        ]
        .into_iter()
        .map(|(t, i)| (t.to_string(), i))
        .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .build()
            .unwrap();
        let mut inner = tokenizers::Tokenizer::new(model);
        inner.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
        let template = "{% for m in messages %}{{ bos_token }}{{ m.role | upper }}: {{ m.content.strip() }}\n{% endfor %}\
                        {% if add_generation_prompt %}ASSISTANT:{% endif %}";
        Tokenizer::new(
            inner,
            Some(template.into()),
            Some("<s>".into()),
            Some("</s>".into()),
            None,
            &[],
        )
        .unwrap()
    }

    #[test]
    fn encodes_decodes_and_knows_its_specials() {
        let t = tiny();
        assert_eq!(t.encode("hello world foo", false).unwrap(), vec![2, 3, 4]);
        assert_eq!((t.bos_token_id(), t.eos_token_ids()), (Some(0), &[1][..]));
        assert!(t
            .decode(&[2, 99], false)
            .unwrap_err()
            .to_string()
            .contains("99"));
    }

    #[test]
    fn renders_the_chat_template() {
        let t = tiny();
        let msgs = [("user".to_string(), " hi ".to_string())];
        assert_eq!(
            t.apply_chat_template(&msgs, true).unwrap(),
            "<s>USER: hi\nASSISTANT:"
        );
        assert_eq!(
            t.apply_chat_template(&msgs, false).unwrap(),
            "<s>USER: hi\n"
        );
    }
}
