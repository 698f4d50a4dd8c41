//! Generated tokens to streamed text: incremental detokenization and stop strings.

use crate::model::{BoxError, Codec};

/// Turns a growing list of token ids into text pieces without re-decoding the whole list
/// at every token, and without ever emitting half of a multi-byte character.
///
/// Tokenizers join pieces with context (byte-level BPE splits characters across tokens;
/// SentencePiece drops a leading space at the start), so each new token is decoded together
/// with the few tokens before it (`prefix..read`), and only the text past what those gave
/// is new (the method of Hugging Face's text-generation-inference).
#[derive(Debug, Default)]
pub struct Detokenizer {
    prefix: usize,
    read: usize,
}

impl Detokenizer {
    /// The new text that `ids` (all generated tokens so far) adds; empty while the last
    /// tokens end inside a character.
    pub fn next(&mut self, codec: &dyn Codec, ids: &[u32]) -> Result<String, BoxError> {
        let before = codec.decode(&ids[self.prefix..self.read])?;
        let now = codec.decode(&ids[self.prefix..])?;
        if now.len() <= before.len() || now.ends_with(char::REPLACEMENT_CHARACTER) {
            return Ok(String::new());
        }
        self.prefix = self.read;
        self.read = ids.len();
        Ok(tail(&now, before.len()))
    }

    /// The text not yet given out, at the end of the generation (incomplete characters
    /// included, as U+FFFD).
    pub fn flush(&mut self, codec: &dyn Codec, ids: &[u32]) -> Result<String, BoxError> {
        if self.read == ids.len() {
            return Ok(String::new());
        }
        let before = codec.decode(&ids[self.prefix..self.read])?;
        let now = codec.decode(&ids[self.prefix..])?;
        self.prefix = ids.len();
        self.read = ids.len();
        Ok(tail(&now, before.len()))
    }
}

/// `text` past its first `from` bytes, from the next character boundary.
fn tail(text: &str, from: usize) -> String {
    let start = (from..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

/// Finds stop strings in streamed text. Text that might be the start of a stop string is
/// held back until the next piece settles it, so a client never sees part of a stop string.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What [`StopMatcher::push`] found.
#[derive(Debug, PartialEq)]
pub enum Matched {
    /// No stop string yet: this text can go to the client.
    Text(String),
    /// A stop string: the text before it, after which the generation ends.
    Stop(String),
}

impl StopMatcher {
    /// A matcher for `stops` (none: every piece passes through at once).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            held: String::new(),
        }
    }

    /// Adds a piece of generated text.
    pub fn push(&mut self, piece: &str) -> Matched {
        if self.stops.is_empty() {
            return Matched::Text(piece.to_owned());
        }
        self.held.push_str(piece);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            self.held.truncate(at);
            return Matched::Stop(std::mem::take(&mut self.held));
        }
        // Hold back the longest end of the text that begins some stop string.
        let keep_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let end = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(end))
            })
            .unwrap_or(self.held.len());
        let rest = self.held.split_off(keep_from);
        Matched::Text(std::mem::replace(&mut self.held, rest))
    }

    /// The held-back text, at the end of the generation.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ByteCodec;

    fn stream(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                Matched::Text(t) => out.push_str(&t),
                Matched::Stop(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_string_split_across_pieces_is_found_and_never_shown() {
        assert_eq!(
            stream(&["END"], &["abc E", "N", "Dxyz"]),
            ("abc ".into(), true)
        );
        assert_eq!(
            stream(&["END"], &["abc EN", "d"]),
            ("abc ENd".into(), false)
        );
        // The earliest of several stop strings wins, wherever it is in the list.
        assert_eq!(stream(&["zz", "b"], &["a", "bzz"]), ("a".into(), true));
        // Multi-byte text: holding back and cutting stay on character boundaries.
        assert_eq!(stream(&["éé"], &["αé", "βéé"]), ("αéβ".into(), true));
        assert_eq!(stream(&[], &["x", "y"]), ("xy".into(), false));
    }

    #[test]
    fn held_text_is_released_once_it_cannot_start_a_stop_string() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("xxST"), Matched::Text("xx".into()));
        assert_eq!(m.push("A"), Matched::Text("STA".into()));
    }

    #[test]
    fn detokenizer_pieces_join_to_the_whole_decode() {
        let codec = ByteCodec::new();
        // "héllo ✓" as bytes: é and ✓ span several tokens.
        let ids: Vec<u32> = "héllo ✓!".bytes().map(u32::from).collect();
        let mut d = Detokenizer::default();
        let mut pieces = Vec::new();
        for n in 1..=ids.len() {
            pieces.push(d.next(&codec, &ids[..n]).unwrap());
        }
        pieces.push(d.flush(&codec, &ids).unwrap());
        assert_eq!(pieces.concat(), "héllo ✓!");
        assert!(pieces
            .iter()
            .all(|p| !p.contains(char::REPLACEMENT_CHARACTER)));
        // The half of é gives nothing until its second byte arrives.
        assert_eq!(pieces[1], "");
        assert_eq!(pieces[2], "é");
    }

    #[test]
    fn detokenizer_flushes_an_incomplete_character() {
        let codec = ByteCodec::new();
        let ids = [u32::from(b'a'), 0xE2];
        let mut d = Detokenizer::default();
        let a = d.next(&codec, &ids[..1]).unwrap();
        let b = d.next(&codec, &ids).unwrap();
        let c = d.flush(&codec, &ids).unwrap();
        assert_eq!((a.as_str(), b.as_str(), c.as_str()), ("a", "", "\u{FFFD}"));
    }
}
