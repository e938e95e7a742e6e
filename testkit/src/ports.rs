//! Free loopback ports for the servers tests start. A port is found by
//! binding port 0; holding every port of one start bound until all are
//! picked keeps the kernel from handing the same port out twice (it reuses
//! a just-released ephemeral port readily).

use std::net::{SocketAddr, TcpListener, UdpSocket};

/// Free loopback ports, each held bound until the reservation is dropped.
#[derive(Default)]
pub(crate) struct PortReservation {
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

impl PortReservation {
    pub(crate) fn tcp(&mut self) -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("a free loopback port");
        let addr = listener.local_addr().expect("its address");
        self.tcp.push(listener);
        addr
    }

    /// A port free for both UDP and TCP (the DNS server binds both).
    pub(crate) fn udp_and_tcp(&mut self) -> SocketAddr {
        for _ in 0..50 {
            let udp = UdpSocket::bind(("127.0.0.1", 0)).expect("a free UDP port");
            let addr = udp.local_addr().expect("its address");
            if let Ok(tcp) = TcpListener::bind(addr) {
                self.udp.push(udp);
                self.tcp.push(tcp);
                return addr;
            }
        }
        panic!("no loopback port free for both UDP and TCP");
    }
}
