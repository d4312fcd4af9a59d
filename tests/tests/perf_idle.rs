//! A userspace data plane that polls must stop polling when the traffic stops: after
//! pings, a TCP transfer and request/response exchanges with a server slower than the
//! reply wait, every weftd worker thread goes back to sleep, and the daemons use next
//! to no CPU while the cluster is idle.

use std::net::UdpSocket;
use std::time::Duration;

use weft_tests::lab::{Lab, LabSpec};
use weft_tests::netns::{spawn_in, spawn_udp_echo};
use weft_tests::proc::cpu_time;
use weft_tests::{require_root, wait_until};

/// How long the idle daemons are watched.
const WINDOW: Duration = Duration::from_secs(3);
/// CPU both daemons may use in that window together: 1% of one CPU (the route
/// reconcile every 2 s, etcd keep-alives). One polling worker would use 100%.
const IDLE_CPU_LIMIT: Duration = Duration::from_millis(30);

/// (name, state) of each `weft-q*` worker thread of `pid`.
fn workers(pid: u32) -> Vec<(String, char)> {
    let mut threads = weft_tests::proc::threads(pid);
    threads.retain(|(name, _)| name.starts_with("weft-q"));
    threads
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn workers_sleep_and_weftd_idles_once_traffic_stops() {
    if !require_root("workers_sleep_and_weftd_idles_once_traffic_stops") {
        return;
    }
    let mut lab = Lab::start(LabSpec::weft(2)).unwrap();
    lab.add_pod(1, "pa").unwrap();
    let server_ip = lab.add_pod(2, "pb").unwrap().to_string();
    let pids: Vec<u32> = (1..=2)
        .map(|n| lab.weftd_pid(n).expect("weftd runs").pid)
        .collect();

    // Traffic of every kind the workers poll for: requests answered at once, a bulk
    // transfer, and requests answered after 1 ms (longer than any reply wait).
    lab.exec(
        "pa",
        &[
            "ping", "-n", "-q", "-c", "100", "-i", "0.005", "-W", "1", &server_ip,
        ],
    )
    .unwrap();
    let pb = lab.netns_of("pb").unwrap();
    let mut command = pb.command("iperf3");
    command
        .args(["-s", "-1", "-p", "5201"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut iperf_server = pb.spawn(command).unwrap();
    wait_until("iperf3 server to listen", Duration::from_secs(5), || {
        !iperf_server.is_running()
            || pb
                .run("ss", &["-Hltn", "sport = :5201"])
                .is_ok_and(|out| !out.trim().is_empty())
    })
    .unwrap();
    lab.exec("pa", &["iperf3", "-c", &server_ip, "-p", "5201", "-t", "1"])
        .unwrap();
    wait_until("iperf3 server to exit", Duration::from_secs(10), || {
        !iperf_server.is_running()
    })
    .unwrap();

    const EXCHANGES: usize = 50;
    // Answers after 1 ms: later than any reply wait.
    let echo = spawn_udp_echo(pb.name(), 9000, EXCHANGES, Duration::from_millis(1)).unwrap();
    let target = format!("{server_ip}:9000");
    spawn_in(lab.netns_of("pa").unwrap().name(), move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = [0u8; 16];
        for n in 0..EXCHANGES {
            socket.send_to(b"request", &target)?;
            socket
                .recv(&mut buf)
                .map_err(|e| anyhow::anyhow!("request {n}: no answer: {e}"))?;
        }
        anyhow::Ok(())
    })
    .join()
    .unwrap()
    .unwrap();
    echo.join().unwrap().unwrap();

    // Every worker is asleep soon after the last packet...
    wait_until(
        "every weftd worker to sleep",
        Duration::from_secs(5),
        || {
            pids.iter().all(|&pid| {
                let workers = workers(pid);
                !workers.is_empty() && workers.iter().all(|(_, state)| *state == 'S')
            })
        },
    )
    .unwrap_or_else(|e| {
        let states: Vec<_> = pids.iter().map(|&pid| workers(pid)).collect();
        panic!("{e:#}: {states:?}")
    });
    // ...and the daemons stay idle.
    let cpu = || -> Duration {
        pids.iter()
            .map(|&pid| cpu_time(pid).expect("weftd runs"))
            .sum()
    };
    let before = cpu();
    // A measurement window, not a synchronisation.
    std::thread::sleep(WINDOW);
    let used = cpu() - before;
    println!("two idle weftds used {used:?} of CPU in {WINDOW:?}");
    assert!(
        used <= IDLE_CPU_LIMIT,
        "two idle weftds used {used:?} of CPU in {WINDOW:?} (limit {IDLE_CPU_LIMIT:?})"
    );
}
