//! Channels to other nodes' APIs, by address, reused across calls: the control plane's
//! forwarding and the gateway's remote tool calls share them.

use std::sync::Arc;

use dashmap::DashMap;
use tonic::transport::Channel;

use crate::env::{Network, NetworkError};

pub struct Peers {
    network: Arc<dyn Network>,
    channels: DashMap<String, Channel>,
}

impl Peers {
    pub fn new(network: Arc<dyn Network>) -> Peers {
        Peers {
            network,
            channels: DashMap::new(),
        }
    }

    /// A channel to the node at `addr`, opened on first use.
    pub fn channel(&self, addr: &str) -> Result<Channel, NetworkError> {
        if let Some(channel) = self.channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = self.network.channel(addr)?;
        self.channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// Drops the channel to `addr`: the next call opens a new connection.
    pub fn forget(&self, addr: &str) {
        self.channels.remove(addr);
    }
}
