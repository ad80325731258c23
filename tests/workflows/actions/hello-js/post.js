// Runs after the job's steps with what main saved (core.getState).
console.log(`post: main greeted ${process.env.STATE_greeted}`);
