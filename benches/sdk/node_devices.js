// N official Node SDK devices (azure-iot-device + azure-iot-device-mqtt, the Mqtt transport)
// sending QoS 1 telemetry: the SDK phase of src/bin/azsim-bench-fleet.rs. Not a test.
//
//     node node_devices.js CS_FILE CA_FILE INTERVAL_S WARMUP_S SECONDS
//
// Same protocol as python_devices.py: CS_FILE one connection string a line; every device
// connects, then sends the bench's JSON body every INTERVAL_S, one at a time, each waited for
// until its PUBACK (sendEvent's callback). Prints {"event":"start","acked":A} once every device
// is connected and WARMUP_S have passed, {"event":"end",...counts} after SECONDS more. The
// modules are resolved from NODE_PATH (the bench installs them into target/bench-node).
'use strict';

const fs = require('fs');
const { Client, Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');

const [csFile, caFile, intervalS, warmupS, secondsS] = process.argv.slice(2);
const interval = Number(intervalS) * 1000;
const strings = fs.readFileSync(csFile, 'utf8').split('\n').map((s) => s.trim()).filter(Boolean);
const ca = fs.readFileSync(caFile, 'utf8');
const counts = { sent: 0, acked: 0, errors: 0 };
let stopped = false;
let connected = 0;

function emit(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event }, fields)) + '\n');
}

function device(cs) {
  const deviceId = cs.split('DeviceId=')[1].split(';')[0];
  const client = Client.fromConnectionString(cs, Mqtt);
  client.setOptions({ ca }, () => {
    client.open((err) => {
      if (err) {
        emit('error', { error: String(err.name || 'open') });
        process.exit(1);
      }
      connected += 1;
      let seq = 0;
      let nextAt = Date.now() + Math.random() * interval;
      const send = () => {
        if (stopped) {
          client.close(() => {});
          return;
        }
        const body = {
          device_id: deviceId,
          temperature: Math.round((20 + (Math.random() * 10 - 5)) * 100) / 100,
          humidity: Math.round((50 + (Math.random() * 20 - 10)) * 100) / 100,
          seq,
        };
        const msg = new Message(JSON.stringify(body));
        msg.contentType = 'application/json';
        msg.contentEncoding = 'utf-8';
        counts.sent += 1;
        seq += 1;
        client.sendEvent(msg, (e) => {
          if (e) counts.errors += 1;
          else counts.acked += 1;
          nextAt += interval;
          const now = Date.now();
          if (nextAt < now) nextAt = now;
          setTimeout(send, nextAt - now);
        });
      };
      setTimeout(send, Math.max(0, nextAt - Date.now()));
    });
  });
}

strings.forEach(device);
const waitAll = setInterval(() => {
  if (connected < strings.length) return;
  clearInterval(waitAll);
  setTimeout(() => {
    emit('start', { acked: counts.acked });
    setTimeout(() => {
      emit('end', Object.assign({ devices: connected }, counts));
      stopped = true;
      setTimeout(() => process.exit(0), 2000);
    }, Number(secondsS) * 1000);
  }, Number(warmupS) * 1000);
}, 100);
