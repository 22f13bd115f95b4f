//! The character-level tokenizer of the built-in tasks (and of JSONL data
//! whose text uses only its alphabet).

/// Padding (never sampled, never trained on).
pub const PAD: u32 = 0;
/// Start of a prompt.
pub const BOS: u32 = 1;
/// End of a response.
pub const EOS: u32 = 2;
const SPECIAL: usize = 3;
/// Every character a built-in task writes.
pub const ALPHABET: &str =
    "0123456789+-*/()=,|?:; abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.!'\"#<>[]_";

#[derive(Clone, Debug)]
pub struct CharTokenizer {
    chars: Vec<char>,
}

impl Default for CharTokenizer {
    fn default() -> Self {
        CharTokenizer {
            chars: ALPHABET.chars().collect(),
        }
    }
}

impl CharTokenizer {
    pub fn vocab_size(&self) -> usize {
        self.chars.len() + SPECIAL
    }

    /// The token of one character, or `None` for a character outside the alphabet.
    pub fn token(&self, c: char) -> Option<u32> {
        self.chars
            .iter()
            .position(|&x| x == c)
            .map(|i| (i + SPECIAL) as u32)
    }

    /// Encode text; the first character outside the alphabet is the error.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, char> {
        text.chars().map(|c| self.token(c).ok_or(c)).collect()
    }

    /// Decode tokens, stopping at the first EOS; special tokens are dropped.
    pub fn decode(&self, tokens: &[u32]) -> String {
        tokens
            .iter()
            .take_while(|&&t| t != EOS)
            .filter_map(|&t| {
                (t as usize)
                    .checked_sub(SPECIAL)
                    .and_then(|i| self.chars.get(i))
            })
            .collect()
    }
}

/// The tokenizer of a run: characters for the built-in tasks, or a Hugging
/// Face `tokenizer.json` (`task.tokenizer`) for user data.
pub enum Tokenizer {
    Char(CharTokenizer),
    Hf {
        tk: Box<tokenizers::Tokenizer>,
        /// Prepended to prompts; `None` where the tokenizer's config does
        /// not ask for one (Qwen's `<s>` is an ordinary token).
        bos: Option<u32>,
        eos: u32,
        vocab: usize,
        /// The checkpoint's chat template, when prompts go through it.
        chat: Option<std::sync::Arc<crate::chat::Chat>>,
    },
}

/// End-of-sequence token names tried in a `tokenizer.json`, in order.
const EOS_NAMES: &[&str] = &[
    "<|endoftext|>",
    "</s>",
    "<eos>",
    "<|eos|>",
    "[SEP]",
    "<|im_end|>",
];
const BOS_NAMES: &[&str] = &[
    "<s>",
    "<bos>",
    "<|begin_of_text|>",
    "[CLS]",
    "<|startoftext|>",
];

impl Tokenizer {
    /// Load a `tokenizer.json`; the error says what is wrong.
    pub fn from_file(path: &str) -> Result<Tokenizer, String> {
        let tk = tokenizers::Tokenizer::from_file(path).map_err(|e| e.to_string())?;
        let id = |names: &[&str]| names.iter().find_map(|n| tk.token_to_id(n));
        let eos = id(EOS_NAMES).ok_or_else(|| {
            format!(
                "the tokenizer has no end-of-sequence token (looked for {})",
                EOS_NAMES.join(", ")
            )
        })?;
        let bos = id(BOS_NAMES).unwrap_or(eos);
        let vocab = tk.get_vocab_size(true);
        Ok(Tokenizer::Hf {
            tk: Box::new(tk),
            bos: Some(bos),
            eos,
            vocab,
            chat: None,
        })
    }

    /// The tokenizer of a pretrained checkpoint: its end-of-sequence id is
    /// the checkpoint's (`eos_token_id` of config.json or
    /// generation_config.json, the first where there are several: an
    /// instruct model's `<|im_end|>`), and a BOS is added only when the
    /// tokenizer's config asks for one.
    pub fn pretrained(
        tk: tokenizers::Tokenizer,
        meta: &crate::family::Meta,
        add_bos: bool,
    ) -> Result<Tokenizer, String> {
        let eos = match meta.eos.first() {
            Some(&e) => e,
            None => EOS_NAMES
                .iter()
                .find_map(|n| tk.token_to_id(n))
                .ok_or("the checkpoint names no eos_token_id and the tokenizer has no end-of-sequence token")?,
        };
        let bos = if add_bos { meta.bos } else { None };
        let vocab = tk.get_vocab_size(true);
        Ok(Tokenizer::Hf {
            tk: Box::new(tk),
            bos,
            eos,
            vocab,
            chat: None,
        })
    }

    /// Prompts go through `chat` (a Hugging Face tokenizer only: the
    /// character tokenizer has no template and is returned as it is).
    pub fn with_chat(mut self, with: crate::chat::Chat) -> Tokenizer {
        if let Tokenizer::Hf { chat, .. } = &mut self {
            *chat = Some(std::sync::Arc::new(with));
        }
        self
    }

    /// The chat template prompts go through, if any.
    pub fn chat(&self) -> Option<&crate::chat::Chat> {
        match self {
            Tokenizer::Hf { chat, .. } => chat.as_deref(),
            Tokenizer::Char(_) => None,
        }
    }

    /// The prompt ids of a prompt's text or conversation (`messages`):
    /// through the chat template (which writes its own special tokens), or
    /// the BOS and the text.
    pub fn prompt(
        &self,
        text: &str,
        messages: Option<&[crate::chat::Message]>,
    ) -> Result<Vec<u32>, String> {
        match self.chat() {
            Some(c) => self.encode(&c.render(text, messages).map_err(|e| e.message)?),
            None => {
                let mut v: Vec<u32> = self.bos().into_iter().collect();
                v.extend(self.encode(text)?);
                Ok(v)
            }
        }
    }

    /// The index of the token of `tokens` whose decoded text holds byte
    /// `offset` of the decoded response (where a verifier's step ends);
    /// `tokens.len()` or more when no token does.
    pub fn token_at_byte(&self, tokens: &[u32], offset: usize) -> usize {
        match self {
            // One ASCII character per token.
            Tokenizer::Char(_) => offset,
            Tokenizer::Hf { tk, eos, .. } => {
                let end = tokens.iter().position(|t| t == eos).unwrap_or(tokens.len());
                let len = |k: usize| tk.decode(&tokens[..k], true).map_or(0, |s| s.len());
                // The first prefix whose text reaches past `offset`: a
                // binary search over prefix lengths (a few decodes).
                let (mut lo, mut hi) = (1, end + 1);
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if len(mid) > offset {
                        hi = mid;
                    } else {
                        lo = mid + 1;
                    }
                }
                lo - 1
            }
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Char(c) => c.vocab_size(),
            Tokenizer::Hf { vocab, .. } => *vocab,
        }
    }

    /// The token that starts every prompt, if any.
    pub fn bos(&self) -> Option<u32> {
        match self {
            Tokenizer::Char(_) => Some(BOS),
            Tokenizer::Hf { bos, .. } => *bos,
        }
    }

    /// The tokenizer as a Hugging Face tokenizer.json text (`None` for the
    /// character tokenizer).
    pub fn to_json(&self) -> Option<String> {
        match self {
            Tokenizer::Char(_) => None,
            Tokenizer::Hf { tk, .. } => tk.to_string(false).ok(),
        }
    }

    /// The string of one token id (`keel inspect`).
    pub fn token_text(&self, id: u32) -> String {
        match self {
            Tokenizer::Char(c) => c.decode(&[id]),
            Tokenizer::Hf { tk, .. } => tk
                .id_to_token(id)
                .map(|t| {
                    tk.decode(&[id], false)
                        .ok()
                        .filter(|s| !s.is_empty())
                        .unwrap_or(t)
                })
                .unwrap_or_default(),
        }
    }

    pub fn eos(&self) -> u32 {
        match self {
            Tokenizer::Char(_) => EOS,
            Tokenizer::Hf { eos, .. } => *eos,
        }
    }

    /// Encode text (no special tokens added); the error names the problem.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        match self {
            Tokenizer::Char(c) => c.encode(text).map_err(|ch| {
                format!("character {ch:?} is not in the built-in tokenizer's alphabet")
            }),
            Tokenizer::Hf { tk, .. } => tk
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| e.to_string()),
        }
    }

    /// Decode up to the first end-of-sequence token.
    pub fn decode(&self, tokens: &[u32]) -> String {
        match self {
            Tokenizer::Char(c) => c.decode(tokens),
            Tokenizer::Hf { tk, eos, .. } => {
                let end = tokens.iter().position(|t| t == eos).unwrap_or(tokens.len());
                tk.decode(&tokens[..end], true).unwrap_or_default()
            }
        }
    }
}

/// One line: kind, vocabulary, BOS and EOS.
pub fn describe(t: &Tokenizer) -> String {
    match t {
        Tokenizer::Char(c) => format!("Keel's character tokenizer, {} ids", c.vocab_size()),
        Tokenizer::Hf {
            bos, eos, vocab, ..
        } => format!(
            "Hugging Face tokenizer, {vocab} ids, eos {eos} {:?}, bos {}",
            t.token_text(*eos),
            bos.map_or("none added".to_string(), |b| format!(
                "{b} {:?}",
                t.token_text(b)
            ))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let t = CharTokenizer::default();
        let ids = t.encode("12+7=19|19").expect("in alphabet");
        assert_eq!(ids[0], 4); // '1' is the second character after 3 specials
        assert_eq!(t.decode(&ids), "12+7=19|19");
        let mut with_eos = ids.clone();
        with_eos.extend([EOS, t.token('5').expect("digit")]);
        assert_eq!(t.decode(&with_eos), "12+7=19|19");
        assert_eq!(t.encode("1€"), Err('€'));
    }

    /// A word-level tokenizer.json written here (no download): ids, the
    /// end-of-sequence token, decoding.
    #[test]
    fn hugging_face_tokenizer_json() {
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"<unk>":0,"</s>":1,"two":2,"plus":3,"is":4,"four":5},"unk_token":"<unk>"}}"#;
        let path = std::env::temp_dir().join(format!("keel-tok-{}.json", std::process::id()));
        std::fs::write(&path, json).expect("write");
        let t = Tokenizer::from_file(path.to_str().expect("utf-8")).expect("loads");
        assert_eq!(t.vocab_size(), 6);
        assert_eq!(t.eos(), 1);
        assert_eq!(t.bos(), Some(1), "no BOS token: the EOS id starts prompts");
        assert_eq!(
            t.encode("two plus two is").expect("encodes"),
            vec![2, 3, 2, 4]
        );
        assert_eq!(t.decode(&[5, 1, 2]), "four");
        // Byte offsets of the decoded text fall in their tokens: "two plus
        // two is" decodes with spaces between words.
        let ids = [2, 3, 2, 4];
        assert_eq!(t.decode(&ids), "two plus two is");
        let at = |b: usize| t.token_at_byte(&ids, b);
        assert_eq!(
            (at(0), at(2), at(4), at(7), at(9), at(14)),
            (0, 0, 1, 1, 2, 3)
        );
        assert!(at(15) >= ids.len());
        let c = Tokenizer::Char(CharTokenizer::default());
        assert_eq!(c.token_at_byte(&[4, 5, 6], 2), 2);
        let bad = std::env::temp_dir().join(format!("keel-tok-bad-{}.json", std::process::id()));
        std::fs::write(&bad, json.replace("\"</s>\":1,", "")).expect("write");
        let e = Tokenizer::from_file(bad.to_str().expect("utf-8"))
            .err()
            .expect("no EOS");
        assert!(e.contains("end-of-sequence"), "{e}");
        assert!(Tokenizer::from_file("/nonexistent/tokenizer.json").is_err());
    }
}
