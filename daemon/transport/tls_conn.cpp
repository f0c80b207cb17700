#include "daemon/transport/tls_conn.h"

#include <openssl/err.h>

#include <algorithm>

namespace p11relay::daemon {

asio::awaitable<int> tls_call(TlsConn& c, TlsOp op, char* data, size_t n) {
  int len = static_cast<int>(std::min<size_t>(n, std::numeric_limits<int>::max()));
  for (;;) {
    ERR_clear_error();
    int r = op == TlsOp::handshake ? SSL_do_handshake(c.ssl.get())
            : op == TlsOp::read    ? SSL_read(c.ssl.get(), data, len)
                                   : SSL_write(c.ssl.get(), data, len);
    if (r > 0) co_return r;
    int e = SSL_get_error(c.ssl.get(), r);
    ERR_clear_error();
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) co_return 0;
    auto [ec] = co_await c.socket.async_wait(e == SSL_ERROR_WANT_READ ? tcp::socket::wait_read : tcp::socket::wait_write,
                                             use_nothrow);
    if (ec) co_return 0;
  }
}

asio::awaitable<bool> tls_write(TlsConn& c, std::string_view data) {
  size_t off = 0;
  while (off < data.size()) {
    int n = co_await tls_call(c, TlsOp::write, const_cast<char*>(data.data() + off), data.size() - off);
    if (n <= 0) co_return false;
    off += static_cast<size_t>(n);
  }
  co_return true;
}

}  // namespace p11relay::daemon
