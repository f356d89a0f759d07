// Drives azure-iot-device over AMQP (azure-iot-device-amqp: Amqp, or AmqpWs) against an azsim
// hub, with azure-iothub as the service (Registry and Twin over REST, Client over AMQP).
//
// Run by tests/it/hub_device_amqp.rs; talks to it through JSON lines on stdout (one object per
// line, key "event") and never prints a key, a token or a connection string.
//
//   node device_amqp.js SERVICE_CS_FILE DEVICE_ID TRANSPORT      (amqp | amqpws)
//   node device_amqp.js x509 HOST DEVICE_ID CERT_FILE KEY_FILE TRANSPORT
//
// The Registry creates DEVICE_ID; the device connects over TRANSPORT and sends telemetry with
// properties, then a message over 256 KiB (refused); it reads its twin, patches reported
// properties and gets the service's desired patch; the service sends three C2D messages, which
// the device completes, abandons (then completes its redelivery) and rejects; the service
// invokes a direct method (the device answers). A client with a wrong key is refused; a second
// client of the same device takes over and the first one's links are detached. The Registry
// deletes the device.
'use strict';

const fs = require('fs');
const device = require('azure-iot-device');
const { Amqp, AmqpWs } = require('azure-iot-device-amqp');
const { NoRetry } = require('azure-iot-common');
const iothub = require('azure-iothub');

const STEP_TIMEOUT_MS = 20000;

function emit(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event }, fields || {})) + '\n');
}

function fail(step, err) {
  emit('error', { step, name: err && err.name, message: String((err && err.message) || err) });
  process.exit(1);
}

// Resolves with the first value `register` hands to its callback, or fails the step.
function waitFor(step, register) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      emit('timeout', { step });
      process.exit(1);
    }, STEP_TIMEOUT_MS);
    register((value) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}

function properties(msg) {
  const out = {};
  for (let i = 0; i < msg.properties.count(); i++) {
    const p = msg.properties.getItem(i);
    out[p.key] = p.value;
  }
  return out;
}

async function step(name, fn) {
  try {
    return await fn();
  } catch (err) {
    fail(name, err);
  }
}

// The error a promise fails with (null when it does not).
function failure(promise) {
  return promise.then(() => null, (e) => e || new Error('failed without an error'));
}

// An error's name, and its inner error's (the SDK wraps link errors; a `disconnect` event
// carries a Disconnected result whose reason is the error).
function describe(err) {
  const inner = err && (err.innerError || err.reason || err.transportObj);
  return {
    name: err && err.constructor && err.constructor.name,
    message: String((err && err.message) || ''),
    inner: inner ? { name: inner.constructor && inner.constructor.name, message: String(inner.message || ''), condition: inner.condition || (inner.amqpError && inner.amqpError.condition) || null } : null,
  };
}

async function main(csFile, deviceId, transportName) {
  const serviceCs = fs.readFileSync(csFile, 'utf8').trim();
  const host = iothub.ConnectionString.parse(serviceCs).HostName;
  const Transport = { amqp: Amqp, amqpws: AmqpWs }[transportName];
  if (!Transport) fail('args', new Error('transport is amqp or amqpws'));
  const registry = iothub.Registry.fromConnectionString(serviceCs);
  const created = (await step('create', () => registry.create({ deviceId }))).responseBody;
  const key = created.authentication.symmetricKey.primaryKey;
  const deviceCs = 'HostName=' + host + ';DeviceId=' + deviceId + ';SharedAccessKey=' + key;

  const client = device.Client.fromConnectionString(deviceCs, Transport);
  await step('open', () => client.open());
  emit('connected', { transport: Transport.name });

  // Telemetry with system and application properties.
  const msg = new device.Message(JSON.stringify({ temperature: 21.5 }));
  msg.messageId = 'amqp-msg-1';
  msg.correlationId = 'amqp-corr-1';
  msg.contentType = 'application/json';
  msg.contentEncoding = 'utf-8';
  msg.properties.add('alert', 'hot');
  msg.properties.add('source', 'node amqp');
  await step('sendEvent', () => client.sendEvent(msg));
  emit('telemetry_sent', { messageId: msg.messageId });
  const big = new device.Message(Buffer.alloc(300 * 1024, 97));
  big.messageId = 'amqp-too-large';
  const tooLarge = await failure(client.sendEvent(big));
  emit('too_large', describe(tooLarge));

  // Twin: get, reported patch, a desired patch from the service.
  const twin = await step('getTwin', () => client.getTwin());
  emit('twin', { desiredVersion: twin.properties.desired.$version, reportedVersion: twin.properties.reported.$version });
  await step('reported', () => new Promise((resolve, reject) => {
    twin.properties.reported.update({ firmware: 'amqp-1.14.4', sdk: { transport: transportName } }, (err) => (err ? reject(err) : resolve()));
  }));
  emit('reported_patched');
  let onDesired = null;
  twin.on('properties.desired', (patch) => {
    if (onDesired && patch.interval !== undefined) onDesired(patch);
  });
  const serviceTwin = (await step('registry.getTwin', () => registry.getTwin(deviceId))).responseBody;
  const desiredSeen = waitFor('desired', (cb) => { onDesired = cb; });
  const updated = (await step('twin.update', () => serviceTwin.update({ properties: { desired: { interval: 7 } } }))).result;
  emit('twin_updated', { version: updated.properties.desired.$version });
  emit('desired', { patch: await desiredSeen });

  // C2D: completed, abandoned then completed, rejected; in that order from one queue.
  const seen = [];
  let onSettled = null;
  client.on('message', (m) => {
    const body = m.data.toString('utf8');
    const abandonFirst = body === 'abandon me' && !seen.some((s) => s.data === body);
    const how = abandonFirst ? 'abandon' : (body === 'reject me' ? 'reject' : 'complete');
    seen.push({ data: body, how, messageId: m.messageId, ack: m.ack, properties: properties(m) });
    client[how](m, (err) => {
      if (err) fail(how, err);
      if (onSettled) onSettled(seen.length);
    });
  });
  let onMethod = null;
  client.onDeviceMethod('reboot', (request, response) => {
    response.send(201, { echo: request.payload, method: request.methodName }, (err) => {
      if (err) fail('method response', err);
      onMethod(request);
    });
  });
  emit('handlers_ready');
  const serviceClient = iothub.Client.fromConnectionString(serviceCs);
  await step('client.open', () => serviceClient.open());
  const allSettled = waitFor('c2d', (cb) => { onSettled = (n) => { if (n === 4) cb(); }; });
  for (const [i, body] of ['complete me', 'abandon me', 'reject me'].entries()) {
    const c2d = new device.Message(body);
    c2d.messageId = 'amqp-c2d-' + (i + 1);
    c2d.ack = 'full';
    c2d.properties.add('color', 'blue');
    await step('client.send', () => serviceClient.send(deviceId, c2d));
  }
  await allSettled;
  emit('c2d', { seen });

  // A direct method through the service client (REST), answered over AMQP.
  const methodSeen = waitFor('method', (cb) => { onMethod = cb; });
  const invoked = await step('invokeDeviceMethod', () => serviceClient.invokeDeviceMethod(deviceId, {
    methodName: 'reboot',
    payload: { delay: 2 },
    responseTimeoutInSeconds: 15,
  }));
  const request = await methodSeen;
  emit('method', { name: request.methodName, payload: request.payload });
  emit('invoked', { status: invoked.result.status, payload: invoked.result.payload });
  await step('client.close', () => serviceClient.close());

  // A wrong key: the hub refuses the put-token.
  const wrongKey = Buffer.alloc(32, 7).toString('base64');
  const intruder = device.Client.fromConnectionString('HostName=' + host + ';DeviceId=' + deviceId + ';SharedAccessKey=' + wrongKey, Transport);
  intruder.setRetryPolicy(new NoRetry());
  emit('bad_token', describe(await failure(intruder.open())));

  // A second client of the same device takes over: the first one's links are detached.
  client.setRetryPolicy(new NoRetry());
  const kicked = waitFor('kicked', (cb) => {
    client.on('error', cb);
    client.on('disconnect', cb);
  });
  const second = device.Client.fromConnectionString(deviceCs, Transport);
  await step('second.open', () => second.open());
  const hello = new device.Message('second');
  hello.messageId = 'amqp-second';
  await step('second.sendEvent', () => second.sendEvent(hello));
  await step('second.getTwin', () => second.getTwin());
  emit('kicked', describe(await kicked));
  await step('second.close', () => second.close());
  await client.close().catch(() => {});

  await step('delete', () => registry.delete(deviceId));
  emit('done');
}

// An X.509 device (no put-token: the TLS client certificate authenticates its links): connect,
// send one message, read the twin.
async function x509(host, deviceId, certFile, keyFile, transportName) {
  const Transport = { amqp: Amqp, amqpws: AmqpWs }[transportName];
  const client = device.Client.fromConnectionString('HostName=' + host + ';DeviceId=' + deviceId + ';x509=true', Transport);
  client.setOptions({ cert: fs.readFileSync(certFile, 'utf8'), key: fs.readFileSync(keyFile, 'utf8') });
  await step('open', () => client.open());
  emit('connected', { transport: Transport.name });
  const msg = new device.Message('x509 ' + transportName);
  msg.messageId = 'amqp-x509-' + transportName;
  await step('sendEvent', () => client.sendEvent(msg));
  emit('telemetry_sent', { messageId: msg.messageId });
  const twin = await step('getTwin', () => client.getTwin());
  emit('twin', { reportedVersion: twin.properties.reported.$version });
  await step('close', () => client.close());
  emit('done');
}

const [mode, ...args] = process.argv.slice(2);
const run = mode === 'x509' ? x509 : main;
run(...(mode === 'x509' ? args : [mode, ...args])).then(() => process.exit(0), (err) => fail('unexpected', err));
