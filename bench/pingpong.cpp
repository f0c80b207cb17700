// pingpong: the floor under any remoting path on this machine. Two processes exchange a 300-byte request and a
// 300-byte reply over loopback TCP (TCP_NODELAY) N times and print the p50/p99 round trip; with "hop" the
// server hands each request to a second thread and waits for it (mutex + condition variable), as a daemon
// with a token worker thread does, so the difference is the cost of one thread hop there and back.
//   pingpong [N] [hop]   ->   {"round_trips":N,"hop":false,"p50_us":20.9,"p99_us":126.0}
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <cstring>
int main(int argc, char** argv) {
  int n = argc > 1 ? atoi(argv[1]) : 5000;
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{}; a.sin_family = AF_INET; a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(ls, (sockaddr*)&a, sizeof a); listen(ls, 1);
  socklen_t al = sizeof a; getsockname(ls, (sockaddr*)&a, &al);
  char buf[300] = {0};
  if (fork() == 0) {
    int c = accept(ls, nullptr, nullptr); int one = 1; setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    bool hop = argc > 2 && !strcmp(argv[2], "hop");
    std::mutex m; std::condition_variable cv; int st = 0;  // 1 = job for worker, 2 = done
    std::thread w;
    if (hop) w = std::thread([&] { for (;;) { std::unique_lock l(m); cv.wait(l, [&] { return st == 1; }); st = 2; cv.notify_all(); } });
    for (;;) { size_t got = 0; while (got < 300) { ssize_t r = read(c, buf + got, 300 - got); if (r <= 0) _exit(0); got += r; }
      if (hop) { std::unique_lock l(m); st = 1; cv.notify_all(); cv.wait(l, [&] { return st == 2; }); st = 0; }
      write(c, buf, 300); }
  }
  int s = socket(AF_INET, SOCK_STREAM, 0); connect(s, (sockaddr*)&a, sizeof a); int one = 1; setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  std::vector<double> lat;
  for (int i = 0; i < n + 200; ++i) {
    auto t = std::chrono::steady_clock::now();
    write(s, buf, 300); size_t got = 0; while (got < 300) { ssize_t r = read(s, buf + got, 300 - got); if (r <= 0) return 1; got += r; }
    if (i >= 200) lat.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t).count());
  }
  close(s); wait(nullptr); std::sort(lat.begin(), lat.end());
  printf("{\"round_trips\":%d,\"hop\":%s,\"p50_us\":%.1f,\"p99_us\":%.1f}\n", n,
         argc > 2 && !strcmp(argv[2], "hop") ? "true" : "false", lat[lat.size() / 2], lat[lat.size() * 99 / 100]);
}
