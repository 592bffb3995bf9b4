// End-to-end scenarios driven by the official TypeScript MCP SDK v2 client (@modelcontextprotocol/client)
// against the gateway over Streamable HTTP, the gateway serving tests/servers/sdk_server.py.
//
//   node scenarios.mjs <url> <mode> <scenario | all>
//
// <mode> is `auto` (the client probes with server/discover and must stay on 2026-07-28, because the
// gateway answers the probe as a 2026-07-28 server does) or `2026-07-28` (a pin: no fallback).
// Each scenario prints one JSON line, {"scenario": name, "ok": true} or {"scenario": name, "ok": false,
// "error": "..."}; the exit status is 0 only when every scenario passed (2 for a usage error).
//
// These are the 2026-07-28 client scenarios of tests/support/sdk_scenarios.py (MODERN_SCENARIOS):
// lists and calls, progress, log messages at a requested level, the tools that need input from the
// client (elicitation, sampling, roots) answered through the handlers registered with
// setRequestHandler, and a listen stream that receives the changes another client of the same
// principal causes.
//
// Every wait is bounded: each scenario runs under SCENARIO_TIMEOUT_MS (its clients closed within
// CLOSE_TIMEOUT_MS after it), notifications are awaited on signals with NOTIFICATION_TIMEOUT_MS, and
// a watchdog ends the whole run after RUN_TIMEOUT_MS whatever happens.

import assert from 'node:assert/strict';

import { Client, LOG_LEVEL_META_KEY, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';

/** Upper bound for one scenario, connecting its clients included. */
const SCENARIO_TIMEOUT_MS = 20_000;
/** Upper bound for an expected notification to arrive after the call that caused it. */
const NOTIFICATION_TIMEOUT_MS = 10_000;
/** Upper bound for closing a scenario's clients (a close aborts streams; it should be immediate). */
const CLOSE_TIMEOUT_MS = 5_000;
/** Upper bound for one client request, below the scenario's so a hung call names itself. */
const REQUEST_TIMEOUT_MS = 15_000;

const MODERN_VERSION = '2026-07-28';
const SERVER_NAME = 'sdk-test-server';
const GREETING_URI = 'test://greeting';
const GREETING_TEXT = 'hello from sdk server';
const SAMPLED_TEXT = 'sampled reply from the client';
const ROOT_URI = 'file:///srv/work';

// ------------------------------------------------------------------------------------ helpers

/** Rejects after `ms` with an error naming `what`; `cancel()` disarms it. */
function deadline(ms, what) {
    let timer;
    const promise = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    });
    return { promise, cancel: () => clearTimeout(timer) };
}

/** `promise`, or a rejection naming `what` after `ms`. */
async function within(ms, what, promise) {
    const limit = deadline(ms, what);
    try {
        return await Promise.race([promise, limit.promise]);
    } finally {
        limit.cancel();
    }
}

/** Values pushed by notification handlers, awaited until a condition on them holds. */
class Seen {
    constructor() {
        this.items = [];
        this._waiters = [];
    }

    push(item) {
        this.items.push(item);
        for (const waiter of [...this._waiters]) {
            if (waiter.condition(this.items)) {
                this._waiters.splice(this._waiters.indexOf(waiter), 1);
                waiter.resolve();
            }
        }
    }

    /** Resolves once `condition(items)` holds; rejects after NOTIFICATION_TIMEOUT_MS. */
    until(condition, what) {
        if (condition(this.items)) {
            return Promise.resolve();
        }
        return within(
            NOTIFICATION_TIMEOUT_MS,
            what,
            new Promise(resolve => this._waiters.push({ condition, resolve }))
        );
    }
}

/** The single text block of a successful tool result. */
function textOf(result) {
    assert.notEqual(result.isError, true, `tool error: ${JSON.stringify(result)}`);
    assert.equal(result.content.length, 1, JSON.stringify(result.content));
    const [block] = result.content;
    assert.equal(block.type, 'text', JSON.stringify(block));
    return block.text;
}

function describe(error) {
    if (error instanceof Error) {
        const code = error.code === undefined ? '' : ` (code ${JSON.stringify(error.code)})`;
        const data = error.data === undefined ? '' : ` data=${JSON.stringify(error.data)}`;
        return `${error.name}${code}: ${error.message}${data}`;
    }
    return String(error);
}

/**
 * Opens clients for one scenario and closes them all afterwards.
 *
 * `open({ capabilities, requests, notifications })` connects a client to `url` in `mode` that
 * declares `capabilities`, answers server requests (and the requests for input embedded in
 * `input_required` results) with `requests` (method -> handler) and hands notifications to
 * `notifications` (method -> handler); the handlers are registered before connecting, as the SDK
 * requires for request handlers. Every client is checked to have negotiated 2026-07-28 with the
 * test server.
 */
class Clients {
    constructor(url, mode) {
        this.url = url;
        this.mode = mode;
        this.open = this.open.bind(this);
        this._clients = [];
    }

    async open({ capabilities = {}, requests = {}, notifications = {} } = {}) {
        const client = new Client(
            { name: 'mcp-gateway-ts-e2e', version: '1.0.0' },
            {
                capabilities,
                versionNegotiation: { mode: this.mode === 'auto' ? 'auto' : { pin: this.mode } }
            }
        );
        for (const [method, handler] of Object.entries(requests)) {
            client.setRequestHandler(method, handler);
        }
        for (const [method, handler] of Object.entries(notifications)) {
            client.setNotificationHandler(method, handler);
        }
        this._clients.push(client);
        await client.connect(new StreamableHTTPClientTransport(new URL(this.url)), {
            timeout: REQUEST_TIMEOUT_MS
        });
        assert.equal(client.getProtocolEra(), 'modern');
        assert.equal(client.getNegotiatedProtocolVersion(), MODERN_VERSION);
        assert.equal(client.getServerVersion()?.name, SERVER_NAME);
        return client;
    }

    async closeAll() {
        const closing = this._clients.map(client => client.close());
        this._clients = [];
        await within(CLOSE_TIMEOUT_MS, 'closing the clients', Promise.allSettled(closing));
    }
}

const request = { timeout: REQUEST_TIMEOUT_MS };

// ---------------------------------------------------------------------------------- scenarios

/** tools/list shows every tool; tools/call returns text and structured content; a bad call is a tool error. */
async function tools(open) {
    const client = await open();
    const listed = await client.listTools(undefined, request);
    const names = new Set(listed.tools.map(tool => tool.name));
    for (const name of ['add', 'echo', 'slow_progress', 'log_then_answer', 'resolved_user', 'resolved_llm', 'announce']) {
        assert.ok(names.has(name), `${name} missing from ${[...names].join(', ')}`);
    }
    const addTool = listed.tools.find(tool => tool.name === 'add');
    assert.deepEqual(Object.keys(addTool.inputSchema.properties).sort(), ['a', 'b']);

    const added = await client.callTool({ name: 'add', arguments: { a: 2, b: 3 } }, request);
    assert.equal(textOf(added), '5');
    assert.deepEqual(added.structuredContent, { result: 5 });

    const echoed = await client.callTool({ name: 'echo', arguments: { text: 'héllo, wörld' } }, request);
    assert.equal(textOf(echoed), 'héllo, wörld');

    const bad = await client.callTool({ name: 'add', arguments: { a: 'two', b: 3 } }, request);
    assert.equal(bad.isError, true, JSON.stringify(bad));
}

/** resources/list, resources/read, resources/templates/list and a templated read. */
async function resources(open) {
    const client = await open();
    const listed = await client.listResources(undefined, request);
    assert.ok(listed.resources.some(resource => resource.uri === GREETING_URI), JSON.stringify(listed));

    const read = await client.readResource({ uri: GREETING_URI }, request);
    assert.equal(read.contents.length, 1);
    assert.equal(read.contents[0].text, GREETING_TEXT);

    const templates = await client.listResourceTemplates(undefined, request);
    assert.ok(
        templates.resourceTemplates.some(template => template.uriTemplate === 'test://items/{item_id}'),
        JSON.stringify(templates)
    );

    const item = await client.readResource({ uri: 'test://items/42' }, request);
    assert.equal(item.contents[0].text, 'item 42');
    assert.equal(item.contents[0].uri, 'test://items/42');
}

/** prompts/list and prompts/get. */
async function prompts(open) {
    const client = await open();
    const listed = await client.listPrompts(undefined, request);
    const greet = listed.prompts.find(prompt => prompt.name === 'greet');
    assert.ok(greet, JSON.stringify(listed));
    assert.deepEqual((greet.arguments ?? []).map(arg => arg.name), ['name']);

    const got = await client.getPrompt({ name: 'greet', arguments: { name: 'Grace' } }, request);
    assert.equal(got.messages.length, 1);
    const [message] = got.messages;
    assert.equal(message.role, 'user');
    assert.equal(message.content.type, 'text');
    assert.ok(message.content.text.includes('Grace'), message.content.text);
}

/** Each notifications/progress of a call reaches the call's onprogress callback. */
async function progress(open) {
    const steps = 5;
    const seen = new Seen();
    const client = await open();
    const result = await client.callTool(
        { name: 'slow_progress', arguments: { steps } },
        { ...request, onprogress: update => seen.push(update) }
    );
    assert.equal(textOf(result), 'done');
    await seen.until(items => items.length >= steps, `${steps} progress notifications`);
    assert.equal(seen.items.length, steps, JSON.stringify(seen.items));
    assert.deepEqual(
        seen.items.map(update => update.progress).sort((a, b) => a - b),
        Array.from({ length: steps }, (_, index) => index + 1)
    );
    assert.deepEqual([...new Set(seen.items.map(update => update.total))], [steps]);
}

/** A call that asks for a log level (the logLevel `_meta` key) receives the log messages at that level; no other call does. */
async function logging(open) {
    const seen = new Seen();
    const notifications = { 'notifications/message': notification => seen.push(notification.params) };

    const quietClient = await open({ notifications });
    const quiet = await quietClient.callTool({ name: 'log_then_answer', arguments: { message: 'unheard' } }, request);
    assert.equal(textOf(quiet), 'logged: unheard');

    const client = await open({ notifications });
    const result = await client.callTool(
        { name: 'log_then_answer', arguments: { message: 'audit trail' }, _meta: { [LOG_LEVEL_META_KEY]: 'info' } },
        request
    );
    assert.equal(textOf(result), 'logged: audit trail');
    await seen.until(items => items.length >= 1, 'the log message');
    assert.deepEqual(
        seen.items.map(params => [params.level, params.data]),
        [['info', 'audit trail']]
    );
}

/** A form elicitation the tool needs is answered by the elicitation/create handler, on every call. */
async function elicitation(open) {
    const questions = [];
    const client = await open({
        capabilities: { elicitation: { form: {} } },
        requests: {
            'elicitation/create': async elicit => {
                assert.equal(elicit.params.requestedSchema.properties.name.type, 'string');
                questions.push(elicit.params.message);
                return { action: 'accept', content: { name: 'Ada' } };
            }
        }
    });
    const first = await client.callTool(
        { name: 'resolved_user', arguments: { question: 'Who wrote the first program?' } },
        request
    );
    assert.equal(textOf(first), 'Ada');
    const again = await client.callTool({ name: 'resolved_user', arguments: { question: 'And the second?' } }, request);
    assert.equal(textOf(again), 'Ada');
    assert.deepEqual(questions, ['Who wrote the first program?', 'And the second?']);
}

/** A sampling request the tool needs is answered by the sampling/createMessage handler. */
async function sampling(open) {
    const asked = [];
    const client = await open({
        capabilities: { sampling: {} },
        requests: {
            'sampling/createMessage': async sample => {
                const { content } = sample.params.messages[0];
                assert.equal(content.type, 'text', JSON.stringify(content));
                asked.push(content.text);
                return { role: 'assistant', content: { type: 'text', text: SAMPLED_TEXT }, model: 'test-model' };
            }
        }
    });
    const result = await client.callTool({ name: 'resolved_llm', arguments: { prompt: 'What is 6 x 7?' } }, request);
    assert.equal(textOf(result), SAMPLED_TEXT);
    assert.deepEqual(asked, ['What is 6 x 7?']);
}

/** A roots request the tool needs is answered by the roots/list handler. */
async function roots(open) {
    let asked = 0;
    const client = await open({
        capabilities: { roots: {} },
        requests: {
            'roots/list': async () => {
                asked += 1;
                return { roots: [{ uri: ROOT_URI, name: 'work' }] };
            }
        }
    });
    const result = await client.callTool({ name: 'resolved_roots', arguments: {} }, request);
    assert.equal(textOf(result), ROOT_URI);
    assert.equal(asked, 1);
}

/**
 * A listen stream receives the tool-list change and the resource update that another client of the
 * same principal causes, and no update for a resource it did not subscribe to.
 */
async function listen(open) {
    const events = new Seen();
    const listening = await open({
        notifications: {
            'notifications/tools/list_changed': () => events.push({ kind: 'tools' }),
            'notifications/resources/updated': notification => events.push({ kind: 'resource', uri: notification.params.uri })
        }
    });
    const subscription = await listening.listen(
        { toolsListChanged: true, resourceSubscriptions: [GREETING_URI] },
        request
    );
    assert.equal(subscription.honoredFilter.toolsListChanged, true, JSON.stringify(subscription.honoredFilter));
    assert.deepEqual(subscription.honoredFilter.resourceSubscriptions, [GREETING_URI]);

    const other = await open();
    const unsubscribed = await other.callTool({ name: 'announce', arguments: { uri: 'test://items/1' } }, request);
    assert.equal(textOf(unsubscribed), 'announced: test://items/1');
    const subscribed = await other.callTool({ name: 'announce', arguments: { uri: GREETING_URI } }, request);
    assert.equal(textOf(subscribed), `announced: ${GREETING_URI}`);

    await events.until(items => items.some(event => event.kind === 'resource'), 'a resource update on the listen stream');
    await events.until(items => items.some(event => event.kind === 'tools'), 'a tool-list change on the listen stream');
    assert.deepEqual(
        events.items.filter(event => event.kind === 'resource').map(event => event.uri),
        [GREETING_URI]
    );
    await subscription.close();
}

const SCENARIOS = { tools, resources, prompts, progress, logging, elicitation, sampling, roots, listen };

// --------------------------------------------------------------------------------------- main

async function runScenario(name, url, mode) {
    const clients = new Clients(url, mode);
    let error;
    try {
        await within(SCENARIO_TIMEOUT_MS, `scenario ${name}`, SCENARIOS[name](clients.open));
    } catch (caught) {
        error = caught;
    }
    try {
        await clients.closeAll();
    } catch (caught) {
        error ??= caught;
    }
    const line = error === undefined ? { scenario: name, ok: true } : { scenario: name, ok: false, error: describe(error) };
    process.stdout.write(`${JSON.stringify(line)}\n`);
    return error === undefined;
}

async function main(argv) {
    const [url, mode, which] = argv;
    const names = which === 'all' ? Object.keys(SCENARIOS) : [which];
    if (argv.length !== 3 || !['auto', MODERN_VERSION].includes(mode) || !names.every(name => name in SCENARIOS)) {
        process.stderr.write(
            `usage: node scenarios.mjs <url> <auto|${MODERN_VERSION}> <all|${Object.keys(SCENARIOS).join('|')}>\n`
        );
        return 2;
    }
    // The scenarios' own deadlines end every wait; this ends the run even if one of them fails to.
    const runTimeoutMs = names.length * (SCENARIO_TIMEOUT_MS + CLOSE_TIMEOUT_MS) + 5_000;
    const watchdog = setTimeout(() => {
        process.stdout.write(`${JSON.stringify({ scenario: 'run', ok: false, error: `not done within ${runTimeoutMs} ms` })}\n`);
        process.exit(1);
    }, runTimeoutMs);
    watchdog.unref();

    let passed = true;
    for (const name of names) {
        passed = (await runScenario(name, url, mode)) && passed;
    }
    return passed ? 0 : 1;
}

// Exit explicitly: idle keep-alive connections must not hold the process open.
process.exit(await main(process.argv.slice(2)));
