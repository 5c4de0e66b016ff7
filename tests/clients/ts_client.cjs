// An MCP client on the official TypeScript SDK (npm @modelcontextprotocol/sdk 1.x,
// protocol 2025-11-25 with Mcp-Session-Id), for the gateway tests.
//
//     node ts_client.cjs COUNT URL [URL ...]
//
// Each HTTP request goes to the next URL in turn (a round-robin load balancer). Lists the
// tools, calls everything__echo COUNT times, and prints one JSON line:
// {"protocol": ..., "tools": [names], "echo": [texts], "session": id}.
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");

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
  const client = new Client({ name: "mcpfleet-test", version: "1.0.0" });
  await client.connect(transport);
  const tools = await client.listTools();
  const echo = [];
  for (let i = 0; i < Number(count); i++) {
    const result = await client.callTool({ name: "everything__echo", arguments: { message: `ts${i}` } });
    echo.push(result.content.map((c) => c.text).join(""));
  }
  console.log(JSON.stringify({
    protocol: transport.protocolVersion,
    tools: tools.tools.map((t) => t.name),
    echo,
    session: transport.sessionId,
  }));
  await transport.terminateSession().catch(() => {});
  await client.close();
}

main().catch((e) => {
  console.error(`${e.name}: ${e.message}`);
  process.exit(1);
});
