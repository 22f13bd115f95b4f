// Starts `keel lsp` for .recipe files. Everything else (diagnostics, hover,
// completion, go to definition, outline, formatting, semantic highlighting)
// comes from the server.
const vscode = require('vscode');
const { LanguageClient } = require('vscode-languageclient/node');

let client;

function activate(context) {
  const command = vscode.workspace.getConfiguration('keel').get('path') || 'keel';
  client = new LanguageClient(
    'keel',
    'Keel',
    { command, args: ['lsp'] },
    { documentSelector: [{ scheme: 'file', language: 'keel' }] }
  );
  context.subscriptions.push({ dispose: () => client && client.stop() });
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
