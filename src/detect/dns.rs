//! DNS "whoami" providers: an A, AAAA or TXT answer, from exactly one named server, holding our address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use super::{Family, IpSource, LookupFuture, ProviderError};

/// What `dns://SERVER[:PORT]/NAME?type=..&class=..` asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DnsQuery {
    pub(crate) server: SocketAddr,
    pub(crate) name: String,
    pub(crate) record: RecordType,
    pub(crate) class: DNSClass,
}

pub(crate) struct DnsWhoami {
    query: DnsQuery,
    timeout: Duration,
    /// hickory-resolver for class IN; it cannot send class CH, which the raw path covers.
    resolver: Option<TokioResolver>,
}

impl DnsWhoami {
    pub(crate) fn new(query: DnsQuery, timeout: Duration) -> Self {
        let resolver = (query.class == DNSClass::IN)
            .then(|| resolver_for(query.server, timeout))
            .flatten();
        DnsWhoami {
            query,
            timeout,
            resolver,
        }
    }

    async fn ask(&self, family: Family) -> Result<IpAddr, ProviderError> {
        if Family::of(self.query.server.ip()) != family {
            return Err(ProviderError::Failed(format!(
                "its server is not reachable over {family}"
            )));
        }
        let records = match &self.resolver {
            Some(resolver) => {
                let lookup = tokio::time::timeout(
                    self.timeout,
                    resolver.lookup(self.query.name.as_str(), self.query.record),
                )
                .await
                .map_err(|_| ProviderError::Failed("timed out".into()))?
                .map_err(|e| ProviderError::Failed(e.to_string()))?;
                lookup.answers().to_vec()
            }
            None => raw_query(&self.query, self.timeout).await?.answers,
        };
        address_in(&records, self.query.record)
    }
}

impl IpSource for DnsWhoami {
    fn lookup(&self, family: Family) -> LookupFuture<'_> {
        Box::pin(self.ask(family))
    }
}

fn resolver_for(server: SocketAddr, timeout: Duration) -> Option<TokioResolver> {
    let mut connection = ConnectionConfig::udp();
    connection.port = server.port();
    let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
        server.ip(),
        true,
        vec![connection],
    )]);
    let mut options = ResolverOpts::default();
    options.timeout = timeout;
    // Our own per-provider backoff retries; a cache would hide an address change.
    options.attempts = 0;
    options.cache_size = 0;
    options.use_hosts_file = ResolveHosts::Never;
    options.ndots = 0;
    hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .ok()
}

/// One UDP query with any class, for what the resolver cannot ask (class CH).
async fn raw_query(query: &DnsQuery, timeout: Duration) -> Result<Message, ProviderError> {
    let fail = |what: &str| ProviderError::Failed(what.to_owned());
    let bind: SocketAddr = match query.server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| ProviderError::Failed(format!("socket: {e}")))?;
    // A connected socket makes the kernel drop datagrams from anyone but the server.
    socket
        .connect(query.server)
        .await
        .map_err(|e| ProviderError::Failed(format!("connect: {e}")))?;
    let name = Name::from_ascii(&query.name).map_err(|_| fail("the name is not a DNS name"))?;
    let mut question = Query::query(name, query.record);
    question.set_query_class(query.class);
    let id: u16 = rand::random();
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(question);
    let wire = message
        .to_vec()
        .map_err(|_| fail("the query cannot be encoded"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    socket
        .send(&wire)
        .await
        .map_err(|e| ProviderError::Failed(format!("send: {e}")))?;
    let mut buffer = vec![0u8; 4096];
    loop {
        let received = tokio::time::timeout_at(deadline, socket.recv(&mut buffer))
            .await
            .map_err(|_| fail("timed out"))?
            .map_err(|e| ProviderError::Failed(format!("receive: {e}")))?;
        // Anything that is not the answer to our question (a stray or spoofed datagram) is skipped.
        let Ok(answer) = Message::from_vec(&buffer[..received]) else {
            continue;
        };
        if answer.metadata.id != id || answer.metadata.message_type != MessageType::Response {
            continue;
        }
        if answer.metadata.response_code != ResponseCode::NoError {
            return Err(ProviderError::Failed(format!(
                "answered {}",
                answer.metadata.response_code
            )));
        }
        return Ok(answer);
    }
}

/// The one address the answer records hold: A/AAAA data, or a TXT string that is an address.
/// Google's whoami adds an `edns0-client-subnet` TXT, which is not an address and is skipped.
pub(crate) fn address_in(records: &[Record], record: RecordType) -> Result<IpAddr, ProviderError> {
    let mut found: Vec<IpAddr> = Vec::new();
    for answer in records {
        let ip = match (&answer.data, record) {
            (RData::A(a), RecordType::A) => Some(IpAddr::V4(a.0)),
            (RData::AAAA(a), RecordType::AAAA) => Some(IpAddr::V6(a.0)),
            (RData::TXT(txt), RecordType::TXT) => {
                let text: String = txt
                    .txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part))
                    .collect();
                text.trim().trim_matches('"').parse::<IpAddr>().ok()
            }
            _ => None,
        };
        if let Some(ip) = ip.filter(|ip| !found.contains(ip)) {
            found.push(ip);
        }
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(ProviderError::Failed("an answer without an address".into())),
        _ => Err(ProviderError::Failed(
            "an answer with more than one address".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, TXT};

    fn record(data: RData) -> Record {
        Record::from_rdata(Name::from_ascii("whoami.test.").expect("name"), 0, data)
    }

    #[test]
    fn txt_and_a_answers() {
        let txt = [
            record(RData::TXT(TXT::new(vec![
                "edns0-client-subnet 192.0.2.0/24".into(),
            ]))),
            record(RData::TXT(TXT::new(vec!["\"198.51.100.7\"".into()]))),
        ];
        assert_eq!(
            address_in(&txt, RecordType::TXT).ok(),
            Some("198.51.100.7".parse().expect("ip"))
        );
        let a = [record(RData::A(A("203.0.113.1".parse().expect("ip"))))];
        assert_eq!(
            address_in(&a, RecordType::A).ok(),
            Some("203.0.113.1".parse().expect("ip"))
        );
        assert!(
            address_in(&a, RecordType::TXT).is_err(),
            "an A record does not answer a TXT question"
        );
        let two = [
            record(RData::A(A("203.0.113.1".parse().expect("ip")))),
            record(RData::A(A("203.0.113.2".parse().expect("ip")))),
        ];
        assert!(address_in(&two, RecordType::A).is_err());
    }
}
