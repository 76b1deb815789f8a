//! The probe thread: about once a second it opens a fresh connection to the URL and asks
//! which server answers (`INFO`). When that is a primary and not the server the writer's or
//! the reader's connection reached, the address now leads elsewhere (a failover behind DNS,
//! a proxy or a virtual IP that redirects only new connections): it tells that side to
//! reconnect, so a node never keeps publishing to, or reading from, an old primary that
//! has not been demoted yet. It writes nothing and reports nothing itself.

use super::connection;
use super::shared::{Shared, Side};
use redis::Client;
use std::sync::Arc;
use std::time::Duration;

/// Between two looks.
pub(super) const EVERY: Duration = Duration::from_secs(1);
/// The probe's own socket timeouts.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn run(shared: Arc<Shared>, client: Client) {
    while shared.sleep(EVERY) {
        let connect_timeout = shared.options.connect_timeout;
        let Ok(mut con) = connection::open(&client, connect_timeout, IO_TIMEOUT) else {
            continue; // Unreachable: the sides find that out themselves.
        };
        let Ok(there) = connection::identity(&mut con) else {
            continue;
        };
        drop(con);
        if !there.is_primary() {
            continue; // A replica behind the address: the writer refuses it on connect.
        }
        let [writer, reader] = shared.servers();
        for (side, on) in [(Side::Writer, writer), (Side::Reader, reader)] {
            if on.is_some_and(|run_id| run_id != there.run_id) {
                log::warn!(
                    "cluster: the address now leads to the primary {}; the {side:?} moves",
                    there.short()
                );
                shared.mark_moved(side);
            }
        }
    }
}
