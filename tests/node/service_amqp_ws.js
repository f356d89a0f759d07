// The official Node.js SDKs over AMQP over WebSockets on both ends: the service client
// (azure-iothub Client with the AmqpWs transport: wss://{host}:443/$iothub/websocket, subprotocol
// AMQPWSB10, through rhea and ws) sends C2D messages and reads their feedback; the device
// (azure-iot-device Client with azure-iot-device-amqp's AmqpWs, the same endpoint) receives and
// completes them.
//
// Run by tests/it/hub_amqp_websocket.rs; talks to it through JSON lines on stdout (one object
// per line, key "event") and never prints a key, a token or a connection string.
//
//   node service_amqp_ws.js SERVICE_CS_FILE DEVICE_CS_FILE COUNT
//
// Opens the device ("device_opened") and the service client ("opened"; each authenticates with
// a CBS put-token over its WebSocket), attaches the feedback receiver, sends COUNT messages with
// ack 'full' ("sent" after each); the device reports each message ("c2d") and completes it; the
// service reads feedback batches ("feedback" with the records of each, completed) until every
// message has its record; both close ("done").
'use strict';

const fs = require('fs');
const iothub = require('azure-iothub');
const device = require('azure-iot-device');
const { AmqpWs: DeviceAmqpWs } = require('azure-iot-device-amqp');
const { Message } = require('azure-iot-common');

const TIMEOUT_MS = 60000;

function emit(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event }, fields || {})) + '\n');
}

function fail(step, err) {
  emit('error', { step, name: err && err.name, message: String((err && err.message) || err) });
  process.exit(1);
}

async function step(name, fn) {
  try {
    return await fn();
  } catch (err) {
    fail(name, err);
  }
}

function properties(msg) {
  const out = {};
  for (let i = 0; i < msg.properties.count(); i++) {
    const p = msg.properties.getItem(i);
    out[p.key] = p.value;
  }
  return out;
}

async function main() {
  const [csFile, deviceCsFile, countArg] = process.argv.slice(2);
  const count = Number(countArg);
  const serviceCs = fs.readFileSync(csFile, 'utf8').trim();
  const deviceCs = fs.readFileSync(deviceCsFile, 'utf8').trim();
  const deviceId = device.ConnectionString.parse(deviceCs).DeviceId;

  const deviceClient = device.Client.fromConnectionString(deviceCs, DeviceAmqpWs);
  deviceClient.on('error', (err) => fail('device', err));
  deviceClient.on('message', (msg) => {
    emit('c2d', {
      data: msg.data.toString('utf8'),
      messageId: msg.messageId,
      properties: properties(msg),
    });
    deviceClient.complete(msg, (err) => {
      if (err) fail('device complete', err);
    });
  });
  await step('device open', () => deviceClient.open());
  emit('device_opened');

  const client = iothub.Client.fromConnectionString(serviceCs, iothub.AmqpWs);
  await step('open', () => client.open());
  emit('opened');
  // Its promise resolves to { result: receiver, message } (a triple-value callback).
  const receiver = (await step('getFeedbackReceiver', () => client.getFeedbackReceiver())).result;
  const ids = [];
  for (let i = 1; i <= count; i++) ids.push('node-ws-' + i);
  const want = new Set(ids);
  const allFeedback = new Promise((resolve) => {
    receiver.on('message', (msg) => {
      let records;
      try {
        records = JSON.parse(msg.data.toString('utf8'));
      } catch (err) {
        fail('feedback body', err);
      }
      emit('feedback', { records });
      for (const r of records) want.delete(r.originalMessageId);
      receiver.complete(msg, (err) => {
        if (err) fail('complete feedback', err);
        if (want.size === 0) resolve();
      });
    });
    receiver.on('error', (err) => fail('feedback receiver', err));
  });
  for (let i = 1; i <= count; i++) {
    const m = new Message('node over amqp-ws ' + i);
    m.messageId = ids[i - 1];
    m.ack = 'full';
    m.properties.add('n', String(i));
    await step('send', () => client.send(deviceId, m));
    emit('sent', { messageId: m.messageId });
  }
  const timer = setTimeout(() => {
    emit('timeout', { step: 'feedback', missing: [...want] });
    process.exit(1);
  }, TIMEOUT_MS);
  await allFeedback;
  clearTimeout(timer);
  await step('close', () => client.close());
  await step('device close', () => deviceClient.close());
  emit('done');
}

main().catch((err) => fail('main', err));
