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
}
