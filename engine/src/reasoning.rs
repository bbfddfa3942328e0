//! Qwen3's reasoning block in a reply: `<think>…</think>` before the answer. [`ReasoningSplit`] separates a
//! streamed reply into reasoning and answer, one rule for the server (`reasoning_content`) and the CLI.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Where the split is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing seen yet: a reply that starts with `<think>` reasons first, any other is all answer.
    Start,
    Reasoning,
    /// After `</think>`: the whitespace that separates it from the answer is dropped.
    AnswerStart,
    Answer,
}

/// Splits streamed reply text into (reasoning, answer) pieces. The tags are not part of either; text that
/// could still become a tag is held back until it is known not to be one.
#[derive(Clone, Debug)]
pub struct ReasoningSplit {
    state: State,
    held: String,
}

impl ReasoningSplit {
    /// `started`: the prompt already opened the block (templates that write `<think>` for the model).
    pub fn new(started: bool) -> ReasoningSplit {
        ReasoningSplit { state: if started { State::Reasoning } else { State::Start }, held: String::new() }
    }

    /// True while the reply is (still) inside its reasoning.
    pub fn in_reasoning(&self) -> bool {
        self.state == State::Reasoning
    }

    /// The next piece of text, split into its reasoning part and its answer part.
    pub fn push(&mut self, text: &str) -> (String, String) {
        self.held.push_str(text);
        let (mut reasoning, mut answer) = (String::new(), String::new());
        loop {
            match self.state {
                State::Start => {
                    let t = self.held.trim_start();
                    if t.is_empty() || (OPEN.starts_with(t) && t.len() < OPEN.len()) {
                        break; // could still be `<think>`
                    }
                    if let Some(rest) = t.strip_prefix(OPEN) {
                        self.held = rest.to_string();
                        self.state = State::Reasoning;
                    } else {
                        self.state = State::Answer;
                    }
                }
                State::Reasoning => match self.held.find(CLOSE) {
                    Some(at) => {
                        reasoning.push_str(&self.held[..at]);
                        self.held.drain(..at + CLOSE.len());
                        self.state = State::AnswerStart;
                    }
                    None => {
                        let keep = partial_tag_len(&self.held, CLOSE);
                        let cut = self.held.len() - keep;
                        reasoning.push_str(&self.held[..cut]);
                        self.held.drain(..cut);
                        break;
                    }
                },
                State::AnswerStart => {
                    let t = self.held.trim_start();
                    if t.is_empty() {
                        self.held.clear();
                        break;
                    }
                    self.held = t.to_string();
                    self.state = State::Answer;
                }
                State::Answer => {
                    answer.push_str(&self.held);
                    self.held.clear();
                    break;
                }
            }
        }
        (reasoning, answer)
    }

    /// Whatever is still held back, at the end of the reply.
    pub fn finish(&mut self) -> (String, String) {
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Reasoning => (held, String::new()),
            State::AnswerStart => (String::new(), String::new()),
            State::Start | State::Answer => (String::new(), held),
        }
    }

    /// A whole reply split at once.
    pub fn split(text: &str, started: bool) -> (String, String) {
        let mut s = ReasoningSplit::new(started);
        let (mut r, mut a) = s.push(text);
        let (r2, a2) = s.finish();
        r.push_str(&r2);
        a.push_str(&a2);
        (r, a)
    }
}

/// Length of the longest tail of `text` that is a proper prefix of `tag`.
fn partial_tag_len(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_whole_and_streamed_alike() {
        let cases = [
            ("<think>\nplan it\n</think>\n\n{\"a\": 1}", false, ("\nplan it\n", "{\"a\": 1}")),
            ("plain answer", false, ("", "plain answer")),
            ("steps</think>answer", true, ("steps", "answer")),
            ("<think>unfinished", false, ("unfinished", "")),
            ("<thin", false, ("", "<thin")),
            ("a < b </think", true, ("a < b </think", "")),
        ];
        for (text, started, (r, a)) in cases {
            assert_eq!(ReasoningSplit::split(text, started), (r.to_string(), a.to_string()), "{text:?}");
            // one character at a time gives the same split
            let mut s = ReasoningSplit::new(started);
            let (mut rr, mut aa) = (String::new(), String::new());
            for c in text.chars() {
                let (x, y) = s.push(&c.to_string());
                rr += &x;
                aa += &y;
            }
            let (x, y) = s.finish();
            assert_eq!((rr + &x, aa + &y), (r.to_string(), a.to_string()), "{text:?} streamed");
        }
    }
}
