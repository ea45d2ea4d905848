//! `iface:NAME` providers: the address configured on a local interface; no network traffic.

use std::net::IpAddr;

use super::{Family, IpSource, LookupFuture, ProviderError};
use crate::net::non_public_reason;

pub(crate) struct InterfaceAddress {
    name: String,
}

impl InterfaceAddress {
    pub(crate) fn new(name: String) -> Self {
        InterfaceAddress { name }
    }

    fn read(&self, family: Family) -> Result<IpAddr, ProviderError> {
        let interfaces = if_addrs::get_if_addrs()
            .map_err(|e| ProviderError::Failed(format!("interfaces cannot be listed: {e}")))?;
        let mut addresses: Vec<IpAddr> = interfaces
            .iter()
            .filter(|i| i.name == self.name)
            .map(|i| i.ip())
            .filter(|ip| Family::of(*ip) == family)
            .collect();
        // A global address first: an interface often holds link-local ones beside it.
        addresses.sort_by_key(|ip| non_public_reason(*ip).is_some());
        addresses.first().copied().ok_or_else(|| {
            ProviderError::Failed(format!("no {family} address on interface {}", self.name))
        })
    }
}

impl IpSource for InterfaceAddress {
    fn lookup(&self, family: Family) -> LookupFuture<'_> {
        Box::pin(async move { self.read(family) })
    }
}
