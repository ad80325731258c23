// The toolkit's core.getInput / setOutput / saveState, by hand: inputs arrive as
// INPUT_<NAME>, outputs and state go to the files GitHub's runner names.
const fs = require("fs");
const who = process.env.INPUT_WHO;
console.log(`hello ${who} from Node.js ${process.versions.node.split(".")[0]}+`);
fs.appendFileSync(process.env.GITHUB_OUTPUT, `greeting=hello ${who}\n`);
fs.appendFileSync(process.env.GITHUB_STATE, `greeted=${who}\n`);
console.log(`::notice title=hello-js::greeted ${who}`);
