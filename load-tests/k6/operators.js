// The operators' load profile: ramp to 300 users (5 min), 500 (15 min), 1,000 (13 min),
// 1,500 (7 min), then down to 0 (4 min); several tenants, a GET/POST mix, think time, and the
// thresholds they hold a release to: p95 under 300 ms, under 1% errors.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e TENANTS=shop.test,api.test,blog.test \
//          -e SCALE=0.05 operators.js
//
// SCALE compresses every stage's duration (0.05: about two minutes in all); USERS scales the
// number of users (0.2: up to 300 instead of 1,500) for smaller machines. BASE_URL must be a
// loopback address unless ALLOW_REMOTE=1: point it at a deployment you own.
import http from 'k6/http';
import { check, sleep } from 'k6';

const SCALE = Number(__ENV.SCALE || 1);
const USERS = Number(__ENV.USERS || 1);
const minutes = (m) => `${Math.max(1, Math.round(m * 60 * SCALE))}s`;
const users = (n) => Math.max(1, Math.round(n * USERS));

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['med', 'p(90)', 'p(95)', 'p(99)', 'max'],
  scenarios: {
    operators: {
      executor: 'ramping-vus',
      startVUs: 0,
      gracefulRampDown: '10s',
      stages: [
        { duration: minutes(5), target: users(300) },
        { duration: minutes(15), target: users(500) },
        { duration: minutes(13), target: users(1000) },
        { duration: minutes(7), target: users(1500) },
        { duration: minutes(4), target: 0 },
      ],
    },
  },
  thresholds: {
    http_req_duration: ['p(95)<300'],
    http_req_failed: ['rate<0.01'],
  },
};

const base = (__ENV.BASE_URL || '').replace(/\/$/, '');
const loopback = /^https?:\/\/(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?$/;
if (!base || (!loopback.test(base) && __ENV.ALLOW_REMOTE !== '1')) {
  throw new Error('BASE_URL must be a loopback URL (or set ALLOW_REMOTE=1 for a deployment you own)');
}
const tenants = (__ENV.TENANTS || 'shop.test,api.test,blog.test').split(',');
const pages = ['/', '/catalogue', '/catalogue/item/42', '/account', '/static/app.js'];

export default function () {
  const host = tenants[Math.floor(Math.random() * tenants.length)];
  const params = { headers: { Host: host }, tags: { tenant: host } };
  // Four reads for one write, as a storefront or a dashboard sees.
  let res;
  if (Math.random() < 0.8) {
    const page = pages[Math.floor(Math.random() * pages.length)];
    res = http.get(`${base}${page}`, params);
  } else {
    const body = JSON.stringify({ item: Math.floor(Math.random() * 1000), quantity: 1 });
    params.headers['Content-Type'] = 'application/json';
    res = http.post(`${base}/orders`, body, params);
  }
  check(res, { 'not 5xx': (r) => r.status > 0 && r.status < 500 });
  // Think time: a user reads the page before the next click.
  sleep(0.5 + Math.random());
}
