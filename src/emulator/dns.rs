//! The emulator's DNS whoami: UDP answers to A, AAAA and TXT questions holding the querier's address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{RData, Record, RecordType};

/// The answer to one datagram, or None for anything that is not a question.
pub(crate) fn answer(datagram: &[u8], peer: SocketAddr) -> Option<Vec<u8>> {
    let request = Message::from_vec(datagram).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let question = request.queries.first()?.clone();
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.authoritative = true;
    response.add_query(question.clone());
    let ip = peer.ip().to_canonical();
    let data = match (question.query_type, ip) {
        (RecordType::A, IpAddr::V4(v4)) => Some(RData::A(A(v4))),
        (RecordType::AAAA, IpAddr::V6(v6)) => Some(RData::AAAA(AAAA(v6))),
        (RecordType::TXT, ip) => Some(RData::TXT(TXT::new(vec![ip.to_string()]))),
        // The querier has no address of that type: an empty NOERROR answer, as real whoamis give.
        _ => None,
    };
    if let Some(data) = data {
        let mut record = Record::from_rdata(question.name.clone(), 0, data);
        // Answer in the question's class (CH for whoami.cloudflare-style questions).
        record.dns_class = question.query_class;
        response.add_answer(record);
    }
    response.to_vec().ok()
}

/// Answers every datagram after `latency`, each in its own task so one delay never holds another;
/// the querier's address is the one `nat` says the API would see.
pub(crate) async fn serve(
    socket: tokio::net::UdpSocket,
    latency: Duration,
    nat: Arc<super::Nat>,
) -> std::io::Result<()> {
    let socket = Arc::new(socket);
    let mut buffer = vec![0u8; 4096];
    loop {
        let (received, peer) = socket.recv_from(&mut buffer).await?;
        let seen = SocketAddr::new(nat.seen(peer.ip()), peer.port());
        let Some(reply) = answer(&buffer[..received], seen) else {
            continue;
        };
        let socket = Arc::clone(&socket);
        tokio::spawn(async move {
            super::delay(latency).await;
            // A reply that cannot be sent (the peer went away) is the peer's problem.
            let _ = socket.send_to(&reply, peer).await;
        });
    }
}
