import { render } from "preact";
import "./console.css";

function App() {
  return <h1>LLM platform console</h1>;
}

render(<App />, document.getElementById("app")!);
