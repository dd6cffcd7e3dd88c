//! The `monitor` dashboard: [`state`] (polling results, rates, views) is kept
//! apart from [`render`] (a pure function of the state) so the drawing is
//! tested on ratatui's `TestBackend`; `monitor_cmd` runs them on a terminal.

pub mod reading;
pub mod render;
pub mod state;

use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::admin_client::AdminClient;
pub use reading::Reading;
pub use state::{Key, Link, MonitorState, View};

/// How long one reading (three admin calls) may take.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Where readings come from: a gateway's admin API.
pub struct Source {
    client: AdminClient,
}

impl Source {
    /// `http://HOST:PORT` of the admin API; the token is only needed by
    /// gateways that protect reads (none do today).
    pub fn new(admin_url: &str, token: Option<String>) -> anyhow::Result<Source> {
        Ok(Source {
            client: AdminClient::for_url(admin_url, token)?,
        })
    }

    pub(crate) fn from_client(client: AdminClient) -> Source {
        Source { client }
    }

    pub fn url(&self) -> String {
        self.client.url()
    }

    /// One reading; `Err` (with the reason) when the gateway cannot be reached.
    pub async fn read(&self) -> Result<Reading, String> {
        // The dashboard stays responsive to keys while a gateway hangs.
        match tokio::time::timeout(READ_TIMEOUT, reading::fetch(&self.client)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {}s", READ_TIMEOUT.as_secs())),
        }
    }
}

/// The dashboard drawn off-screen at `width` x `height`, as text.
pub fn screen_text(state: &MonitorState, width: u16, height: u16) -> String {
    // The test backend cannot fail (its error type is uninhabited).
    let Ok(mut terminal) = Terminal::new(TestBackend::new(width, height));
    let Ok(_) = terminal.draw(|frame| render::render(frame, state));
    render::to_text(terminal.backend().buffer())
}
