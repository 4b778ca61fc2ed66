//! Splitting a completion into its reasoning and answer blocks.

use serde::{Deserialize, Serialize};

/// The tag names: ChexReason uses `<think>` and `<solution>`; `<answer>` is the other common
/// choice for the second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFormat {
    pub think_tag: String,
    pub answer_tag: String,
}

impl Default for OutputFormat {
    fn default() -> Self {
        Self {
            think_tag: "think".into(),
            answer_tag: "solution".into(),
        }
    }
}

impl OutputFormat {
    /// The answer as a model is taught to write it: `<think>{reasoning}</think>` then
    /// `<solution>{answer}</solution>` (what prompts ask for and reference traces hold).
    pub fn render(&self, reasoning: &str, answer: &str) -> String {
        format!(
            "<{t}>{reasoning}</{t}><{a}>{answer}</{a}>",
            t = self.think_tag,
            a = self.answer_tag
        )
    }

    /// The two blocks empty, as a prompt names them: (`<think></think>`, `<solution></solution>`).
    pub fn empty_blocks(&self) -> (String, String) {
        (
            format!("<{0}></{0}>", self.think_tag),
            format!("<{0}></{0}>", self.answer_tag),
        )
    }

    /// Whether `text` opens an answer block.
    pub fn has_answer_block(&self, text: &str) -> bool {
        text.contains(&format!("<{}>", self.answer_tag))
    }
}

/// Strict: exactly one reasoning block then one answer block, nothing but whitespace
/// around them. Lenient: the first reasoning block and the last complete answer block,
/// wherever they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParseMode {
    #[default]
    Strict,
    Lenient,
}

/// What the parser found.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ParsedOutput {
    pub reasoning: Option<String>,
    /// The answer block's content; `None` when there is no complete answer block (or, in
    /// strict mode, when the strict format does not hold).
    pub answer: Option<String>,
    /// Whether the strict format holds, whichever mode was used.
    pub strict_format: bool,
    /// Non-whitespace characters outside the chosen blocks.
    pub outside_chars: usize,
}

fn block(text: &str, tag: &str, from: usize) -> Option<(usize, usize, usize, usize)> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = from + text.get(from..)?.find(&open)?;
    let content = start + open.len();
    let end = content + text[content..].find(&close)?;
    Some((start, content, end, end + close.len()))
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

fn non_whitespace(s: &str) -> usize {
    s.chars().filter(|c| !c.is_whitespace()).count()
}

/// Parses a completion; never panics, whatever the input.
pub fn parse_output(text: &str, format: &OutputFormat, mode: ParseMode) -> ParsedOutput {
    let (t, a) = (&format.think_tag, &format.answer_tag);
    let once =
        |tag: &str| count(text, &format!("<{tag}>")) == 1 && count(text, &format!("</{tag}>")) == 1;
    let strict = (|| {
        if !(once(t) && once(a)) {
            return None;
        }
        let think = block(text, t, 0)?;
        let answer = block(text, a, think.3)?;
        let outside = [
            &text[..think.0],
            &text[think.3..answer.0],
            &text[answer.3..],
        ];
        if outside.iter().any(|s| !s.trim().is_empty()) {
            return None;
        }
        Some((think, answer))
    })();
    if let Some((think, answer)) = strict {
        return ParsedOutput {
            reasoning: Some(text[think.1..think.2].trim().to_string()),
            answer: Some(text[answer.1..answer.2].trim().to_string()),
            strict_format: true,
            outside_chars: 0,
        };
    }
    let reasoning = block(text, t, 0);
    let mut last_answer = None;
    let mut from = 0;
    while let Some(found) = block(text, a, from) {
        last_answer = Some(found);
        from = found.3;
    }
    let mut inside = 0;
    for (start, _, _, end) in reasoning.iter().chain(last_answer.iter()) {
        inside += non_whitespace(&text[*start..*end]);
    }
    ParsedOutput {
        reasoning: reasoning.map(|r| text[r.1..r.2].trim().to_string()),
        answer: match mode {
            ParseMode::Strict => None,
            ParseMode::Lenient => last_answer.map(|r| text[r.1..r.2].trim().to_string()),
        },
        strict_format: false,
        outside_chars: non_whitespace(text).saturating_sub(inside),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_and_lenient() {
        let f = OutputFormat::default();
        let good = " <think>heart is big</think>\n<solution>Cardiomegaly</solution> ";
        let p = parse_output(good, &f, ParseMode::Strict);
        assert!(p.strict_format);
        assert_eq!(p.answer.as_deref(), Some("Cardiomegaly"));
        assert_eq!(p.reasoning.as_deref(), Some("heart is big"));

        let chatty = "Sure! <think>x</think><solution>Edema</solution> Hope this helps.";
        assert_eq!(parse_output(chatty, &f, ParseMode::Strict).answer, None);
        let lenient = parse_output(chatty, &f, ParseMode::Lenient);
        assert_eq!(lenient.answer.as_deref(), Some("Edema"));
        assert!(!lenient.strict_format);
        assert_eq!(lenient.outside_chars, "Sure!Hopethishelps.".len());

        let twice = "<think>a</think><solution>A</solution><solution>B</solution>";
        assert!(!parse_output(twice, &f, ParseMode::Strict).strict_format);
        assert_eq!(
            parse_output(twice, &f, ParseMode::Lenient)
                .answer
                .as_deref(),
            Some("B")
        );
        let reversed = "<solution>A</solution><think>a</think>";
        assert!(!parse_output(reversed, &f, ParseMode::Strict).strict_format);
        let unclosed = "<think>a</think><solution>A";
        assert_eq!(parse_output(unclosed, &f, ParseMode::Lenient).answer, None);

        let answer_tags = OutputFormat {
            answer_tag: "answer".into(),
            ..OutputFormat::default()
        };
        assert!(
            parse_output(
                "<think>a</think><answer>Edema</answer>",
                &answer_tags,
                ParseMode::Strict
            )
            .strict_format
        );
    }
}
