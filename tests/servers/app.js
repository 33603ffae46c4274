// Uninstrumented Node HTTP test service for sonde's end-to-end tests.
// Listens on 127.0.0.1, on the port given as its argument or else an ephemeral
// one, and prints the port on the first line of stdout.
//
//   GET /hello         200 "hello"
//   GET /items/<id>    200
//   GET /slow?ms=N     200 after N ms
//   anything else      404
"use strict";
const http = require("http");

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://localhost");
  const reply = (status, body) => {
    res.writeHead(status, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(body) });
    res.end(body);
  };
  if (url.pathname === "/hello") {
    reply(200, "hello\n");
  } else if (url.pathname.startsWith("/items/")) {
    reply(200, `item ${url.pathname.slice("/items/".length)}\n`);
  } else if (url.pathname === "/slow") {
    setTimeout(() => reply(200, "slow\n"), Number(url.searchParams.get("ms") || 0));
  } else {
    reply(404, "not found\n");
  }
});

server.listen(Number(process.argv[2] || 0), "127.0.0.1", () => {
  console.log(server.address().port);
});
