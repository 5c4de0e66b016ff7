// An MCP client on the official TypeScript SDK 2.x (npm @modelcontextprotocol/client) in
// its `auto` negotiation mode: it probes with `server/discover` and talks 2026-07-28
// (no session) to a server that offers it, for the gateway tests.
//
//     node ts2_client.cjs COUNT URL [URL ...]
//
// Each HTTP request goes to the next URL in turn (a round-robin load balancer). Lists the
// tools, calls everything__echo COUNT times, and prints one JSON line:
// {"protocol": ..., "tools": [names], "echo": [texts], "session": id or null}.
const { Client, StreamableHTTPClientTransport } = require("@modelcontextprotocol/client");

async function main() {
  const [count, ...urls] = process.argv.slice(2);
  let next = 0;
  const roundRobin = (input, init) => {
    const target = new URL(urls[next++ % urls.length]);
    const url = new URL(input instanceof Request ? input.url : input.toString());
    url.host = target.host;
    return fetch(url, init);
  };
  const transport = new StreamableHTTPClientTransport(new URL(urls[0]), { fetch: roundRobin });
  const client = new Client(
    { name: "mcpfleet-test", version: "2.0.0" },
    { versionNegotiation: { mode: "auto" } },
  );
  await client.connect(transport);
  const tools = await client.listTools();
  const echo = [];
  for (let i = 0; i < Number(count); i++) {
    const result = await client.callTool({ name: "everything__echo", arguments: { message: `v2-${i}` } });
    echo.push(result.content.map((c) => c.text).join(""));
  }
  console.log(JSON.stringify({
    protocol: client.getNegotiatedProtocolVersion() ?? null,
    tools: tools.tools.map((t) => t.name),
    echo,
    session: transport.sessionId ?? null,
  }));
  await client.close();
}

main().catch((e) => {
  console.error(`${e.name}: ${e.message}`);
  process.exit(1);
});
