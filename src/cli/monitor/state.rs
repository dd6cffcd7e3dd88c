//! What the dashboard knows: the last reading, rates computed from
//! successive totals, whether the gateway answers, the view and pause.
//! No terminal and no network here: readings and keys are fed in.

use std::collections::VecDeque;
use std::time::Duration;

use super::reading::Reading;

/// Points of history kept for the sparklines (one per poll); wider
/// terminals show more of them, memory stays bounded.
pub const HISTORY: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Overview,
    Traffic,
    Offenders,
    Blocks,
}

impl View {
    pub const ALL: [View; 4] = [View::Overview, View::Traffic, View::Offenders, View::Blocks];

    pub fn title(self) -> &'static str {
        match self {
            View::Overview => "Overview",
            View::Traffic => "Routes & rules",
            View::Offenders => "Offenders & violations",
            View::Blocks => "Blocks",
        }
    }

    fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    /// Nothing asked yet.
    Connecting,
    Up,
    /// The last `failures` polls failed, the latest with `error`.
    Down {
        error: String,
        failures: u64,
    },
}

/// A key, as the dashboard understands it (the terminal's are mapped here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Tab,
    BackTab,
    Left,
    Right,
    Esc,
    CtrlC,
}

pub struct MonitorState {
    pub target: String,
    pub view: View,
    pub paused: bool,
    pub link: Link,
    /// The latest good reading; kept (and shown as stale) while the gateway is away.
    pub reading: Option<Reading>,
    /// Requests per second, one point per poll, newest last.
    pub rps: VecDeque<u64>,
    /// Percentage of requests rejected in each poll interval.
    pub block_pct: VecDeque<u64>,
    /// The rates of the latest interval, when there was one.
    pub current_rps: Option<f64>,
    pub current_block_pct: Option<f64>,
    /// When the previous reading was taken, and its totals.
    previous: Option<(Duration, u64, u64)>,
}

impl MonitorState {
    pub fn new(target: impl Into<String>) -> MonitorState {
        MonitorState {
            target: target.into(),
            view: View::Overview,
            paused: false,
            link: Link::Connecting,
            reading: None,
            rps: VecDeque::new(),
            block_pct: VecDeque::new(),
            current_rps: None,
            current_block_pct: None,
            previous: None,
        }
    }

    /// Takes in a poll made at `at` (any monotonic origin).
    pub fn apply(&mut self, at: Duration, result: Result<Reading, String>) {
        let reading = match result {
            Ok(reading) => reading,
            Err(error) => {
                let failures = match &self.link {
                    Link::Down { failures, .. } => failures + 1,
                    _ => 1,
                };
                self.link = Link::Down { error, failures };
                // The next good reading may come from a restarted gateway:
                // no rate across the gap.
                self.previous = None;
                self.current_rps = None;
                self.current_block_pct = None;
                return;
            }
        };
        self.link = Link::Up;
        if let Some((then, total, blocked)) = self.previous
            && at > then
            // Totals going down mean /stats/reset or a restart: skip the interval.
            && reading.total >= total
            && reading.blocked >= blocked
        {
            let requests = reading.total - total;
            let seconds = (at - then).as_secs_f64();
            let rps = requests as f64 / seconds;
            let pct = if requests == 0 {
                0.0
            } else {
                (reading.blocked - blocked) as f64 * 100.0 / requests as f64
            };
            push(&mut self.rps, rps.round() as u64);
            push(&mut self.block_pct, pct.round() as u64);
            self.current_rps = Some(rps);
            self.current_block_pct = Some(pct);
        }
        self.previous = Some((at, reading.total, reading.blocked));
        self.reading = Some(reading);
    }

    /// Handles a key; `true` means quit.
    pub fn key(&mut self, key: Key) -> bool {
        let n = View::ALL.len();
        match key {
            Key::Char('q') | Key::Esc | Key::CtrlC => return true,
            Key::Char('p') | Key::Char(' ') => self.paused = !self.paused,
            Key::Tab | Key::Right | Key::Char('l') => {
                self.view = View::ALL[(self.view.index() + 1) % n];
            }
            Key::BackTab | Key::Left | Key::Char('h') => {
                self.view = View::ALL[(self.view.index() + n - 1) % n];
            }
            Key::Char(c @ '1'..='4') => {
                self.view = View::ALL[(c as usize - '1' as usize).min(n - 1)];
            }
            _ => {}
        }
        false
    }
}

fn push(history: &mut VecDeque<u64>, value: u64) {
    if history.len() == HISTORY {
        history.pop_front();
    }
    history.push_back(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(total: u64, blocked: u64) -> Reading {
        Reading {
            total,
            blocked,
            allowed: total - blocked,
            ..Reading::default()
        }
    }

    #[test]
    fn rates_come_from_successive_totals() {
        let mut s = MonitorState::new("x");
        s.apply(Duration::from_secs(1), Ok(reading(100, 0)));
        assert_eq!(s.current_rps, None);
        s.apply(Duration::from_secs(3), Ok(reading(300, 50)));
        assert_eq!(s.current_rps, Some(100.0));
        assert_eq!(s.current_block_pct, Some(25.0));
        assert_eq!(s.rps, [100]);
    }

    #[test]
    fn a_lost_gateway_is_reported_and_the_restart_is_not_a_rate() {
        let mut s = MonitorState::new("x");
        s.apply(Duration::from_secs(1), Ok(reading(1000, 0)));
        s.apply(Duration::from_secs(2), Err("refused".into()));
        s.apply(Duration::from_secs(3), Err("refused".into()));
        assert_eq!(
            s.link,
            Link::Down {
                error: "refused".into(),
                failures: 2
            }
        );
        assert!(s.reading.is_some(), "the last reading stays on screen");
        s.apply(Duration::from_secs(4), Ok(reading(5, 0)));
        assert_eq!(s.link, Link::Up);
        assert!(s.rps.is_empty());
    }

    #[test]
    fn keys_switch_views_pause_and_quit() {
        let mut s = MonitorState::new("x");
        assert!(!s.key(Key::Tab));
        assert_eq!(s.view, View::Traffic);
        s.key(Key::BackTab);
        s.key(Key::BackTab);
        assert_eq!(s.view, View::Blocks);
        s.key(Key::Char('3'));
        assert_eq!(s.view, View::Offenders);
        s.key(Key::Char('p'));
        assert!(s.paused);
        assert!(s.key(Key::Char('q')));
    }

    #[test]
    fn history_is_bounded() {
        let mut s = MonitorState::new("x");
        for i in 0..(HISTORY as u64 + 50) {
            s.apply(Duration::from_secs(i + 1), Ok(reading(i * 10, 0)));
        }
        assert_eq!(s.rps.len(), HISTORY);
    }
}
