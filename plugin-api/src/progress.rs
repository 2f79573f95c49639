//! Progress while an instance starts (plugin-api 1.2), as the original's `backend`
//! package has it (`Progresser`, `ProgressEntry`, `TextProgresser`).

/// How a step went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ProgressState {
    /// Under way, or just information.
    #[default]
    Neutral,
    /// Done.
    Success,
    /// Failed.
    Failure,
}

impl ProgressState {
    /// `neutral`, `success` or `failure`, as the original names them.
    pub fn name(self) -> &'static str {
        match self {
            Self::Neutral => "neutral",
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        match self {
            Self::Neutral => 0,
            Self::Success => 1,
            Self::Failure => 2,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Success,
            2 => Self::Failure,
            _ => Self::Neutral,
        }
    }
}

/// One step of an instance's start, as the original's `ProgressEntry`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ProgressEntry {
    /// What happens, e.g. `container created`.
    pub message: String,
    /// How it went.
    pub state: ProgressState,
    /// Begins on a new line even when the previous entry continues.
    pub interrupts: bool,
    /// The next entry continues this line.
    pub continues: bool,
    /// The message is written as it is, without a head or a line end.
    pub raw: bool,
}

impl ProgressEntry {
    /// An entry with `message` and `state`, on a line of its own.
    pub fn new(message: impl Into<String>, state: ProgressState) -> Self {
        Self {
            message: message.into(),
            state,
            ..Self::default()
        }
    }

    /// The entry as the original's text progresser writes it into a job's log: a head
    /// (`✓ `, `✗ `, `• `) and `\r\n`, with `interrupts`, `continues` and `raw` as there.
    pub fn text(&self) -> String {
        if self.raw {
            return self.message.clone();
        }
        let head = match self.state {
            ProgressState::Success => "✓ ",
            ProgressState::Failure => "✗ ",
            ProgressState::Neutral => "• ",
        };
        let lead = if self.interrupts { "\r\n" } else { "" };
        let tail = if self.continues { "" } else { "\r\n" };
        format!("{lead}{head}{}{tail}", self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_the_originals() {
        let e = ProgressEntry::new("container created", ProgressState::Success);
        assert_eq!(e.text(), "✓ container created\r\n");
        let e = ProgressEntry {
            interrupts: true,
            continues: true,
            ..ProgressEntry::new("waiting", ProgressState::Neutral)
        };
        assert_eq!(e.text(), "\r\n• waiting");
        let e = ProgressEntry {
            raw: true,
            ..ProgressEntry::new(".", ProgressState::Failure)
        };
        assert_eq!(e.text(), ".");
        for s in [
            ProgressState::Neutral,
            ProgressState::Success,
            ProgressState::Failure,
        ] {
            assert_eq!(ProgressState::from_u8(s.to_u8()), s);
        }
    }
}
