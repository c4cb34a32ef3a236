"""A config's fields as a person reads them: each field's comment from the config sources, the
resolved config printed with them (`run.py --mode=config`), and the nearest names of a field that
does not exist.

The comments are the config files' own, read from their source (`ast` and `tokenize`; nothing is
run): the comment at the end of the line that sets a field (`t.steps = 3000  # ...`, or a
`name=value,  # ...` line inside `ConfigDict(dict(...))`), with the comment lines that continue it
(aligned under it), or else the comment lines right above it. Which field a line sets is found by
its names: `config.a.b = ...` sets `a.b`, and in a function named `<section>_config` (e.g.
`train_config` in convssl_jax/recipes.py) the variable it returns is `<section>`; a section made
by such a function elsewhere (`units.data = vap.data_config(...)`) reads that section's comments.
"""

import ast
import dataclasses
import difflib
import importlib.util
import io
import pathlib
import tokenize
from collections.abc import Iterable, Iterator

# Modules whose imports are followed from a config file to the files that build its sections.
SOURCE_PACKAGES = ('configs', 'convssl_jax')


def flatten(config, prefix: str = '', order=None) -> Iterator[tuple[str, object]]:
  """(dotted path, value) of every leaf of a ConfigDict (or dict); each section's fields sorted by
  `order(path)` when given, else as the mapping gives them."""
  items = list(config.items())
  if order is not None:
    items.sort(key=lambda item: order(f'{prefix}{item[0]}'))
  for key, value in items:
    path = f'{prefix}{key}'
    if hasattr(value, 'items'):
      yield from flatten(value, f'{path}.', order)
    else:
      yield path, value


def lookup(config, path: str, default=None):
  """The value at dotted `path` of a ConfigDict (or dict), or `default` where there is none."""
  node = config
  for key in path.split('.'):
    if not hasattr(node, 'keys') or key not in node.keys():
      return default
    node = node[key]
  return node


@dataclasses.dataclass
class Comments:
  """Field path -> its comment, and the order the sources set the fields in; `aliases`: section
  path -> the section whose comments it reads."""
  fields: dict[str, str] = dataclasses.field(default_factory=dict)
  order: dict[str, int] = dataclasses.field(default_factory=dict)
  aliases: dict[str, str] = dataclasses.field(default_factory=dict)

  def add(self, path: str, text: str) -> None:
    self.order.setdefault(path, len(self.order))
    if text and path not in self.fields:  # the first source (the one that defines it) wins
      self.fields[path] = text

  def _aliased(self, path: str) -> str | None:
    for alias, section in self.aliases.items():
      if path.startswith(alias + '.'):
        return section + path[len(alias):]
    return None

  def get(self, path: str) -> str:
    if path in self.fields:
      return self.fields[path]
    return self.get(aliased) if (aliased := self._aliased(path)) else ''

  def position(self, path: str) -> float:
    """Where the sources first set `path` (fields never set: last)."""
    if path in self.order:
      return self.order[path]
    return self.position(aliased) if (aliased := self._aliased(path)) else float('inf')


def _comment_lines(source: str) -> tuple[dict[int, tuple[int, str]], dict[int, tuple[int, str]]]:
  """({line: (text column, text)} of comments that end a line of code, {...} of comment-only
  lines)."""
  trailing, alone = {}, {}
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      line, col = token.start
      body = token.string[1:]
      text_col = col + 1 + len(body) - len(body.lstrip())
      target = alone if not token.line[:col].strip() else trailing
      target[line] = (text_col, body.strip())
  return trailing, alone


class _Source:
  """One file's comments by line: a line's own (with its aligned continuation lines) or the
  comment block right above it."""

  def __init__(self, source: str):
    self.trailing, alone = _comment_lines(source)
    continued = {}  # line -> the continuation lines' texts
    self.alone = dict(alone)
    for line, (col, _) in self.trailing.items():
      texts, next_line = [], line + 1
      while next_line in alone and alone[next_line][0] == col:
        texts.append(alone[next_line][1])
        del self.alone[next_line]
        next_line += 1
      continued[line] = texts
    self.continued = continued

  def own(self, line: int) -> str:
    if line not in self.trailing:
      return ''
    return ' '.join([self.trailing[line][1], *self.continued[line]])

  def above(self, line: int) -> str:
    texts = []
    while line - 1 in self.alone:
      line -= 1
      texts.insert(0, self.alone[line][1])
    return ' '.join(texts)

  def comment(self, line: int, with_above: bool = True) -> str:
    return self.own(line) or (self.above(line) if with_above else '')


def _name_of(node: ast.AST) -> str | None:
  """The called function's name: `f` of `f(...)` or of `module.f(...)`."""
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    return node.attr
  return None


def _dict_items(node: ast.AST) -> list[tuple[str, ast.AST, int]] | None:
  """(key, value, line) of `ConfigDict(dict(k=v, ...))`, `ConfigDict({...})`, `dict(...)` or
  `{...}`; None for any other expression."""
  if isinstance(node, ast.Call) and _name_of(node.func) == 'ConfigDict' and node.args:
    return _dict_items(node.args[0])
  if isinstance(node, ast.Call) and _name_of(node.func) == 'dict' and not node.args:
    return [(k.arg, k.value, k.lineno) for k in node.keywords if k.arg]
  if isinstance(node, ast.Dict):
    return [(k.value, v, k.lineno) for k, v in zip(node.keys, node.values)
            if isinstance(k, ast.Constant) and isinstance(k.value, str)]
  if isinstance(node, ast.Call) and _name_of(node.func) == 'ConfigDict':
    return []
  return None


def _section_builder(node: ast.AST) -> str | None:
  """`s` of a call `s_config(...)` (a section builder)."""
  name = isinstance(node, ast.Call) and _name_of(node.func)
  if name and name.endswith('_config') and name != 'get_config':
    return name[:-len('_config')]
  return None


def _file_comments(path: pathlib.Path, comments: Comments) -> None:
  source = path.read_text(encoding='utf-8')
  lines = _Source(source)

  def value(prefix: str, node: ast.AST, line: int) -> None:
    if section := _section_builder(node):
      if section != prefix:
        comments.aliases.setdefault(prefix, section)
      return
    items = _dict_items(node)
    for key, sub, sub_line in items or ():
      comments.add(f'{prefix}.{key}', lines.comment(sub_line))
      value(f'{prefix}.{key}', sub, sub_line)

  for function in ast.walk(ast.parse(source)):
    if not isinstance(function, ast.FunctionDef):
      continue
    roots = {}
    if section := _section_builder(ast.Call(func=ast.Name(function.name), args=[], keywords=[])):
      roots = {n.value.id: section for n in ast.walk(function)
               if isinstance(n, ast.Return) and isinstance(n.value, ast.Name)}
    roots['config'] = ''  # a whole config (`base_config` returns one too)

    def path_of(target: ast.AST) -> str | None:
      parts = []
      while isinstance(target, ast.Attribute):
        parts.insert(0, target.attr)
        target = target.value
      if not parts or not isinstance(target, ast.Name) or target.id not in roots:
        return None
      return '.'.join(filter(None, [roots[target.id], *parts]))

    for statement in ast.walk(function):
      if not isinstance(statement, ast.Assign):
        continue
      for target in statement.targets:
        for one in target.elts if isinstance(target, ast.Tuple) else [target]:
          if (path := path_of(one)) is not None:
            comments.add(path, lines.comment(statement.lineno))
            value(path, statement.value, statement.lineno)


def _module_file(name: str) -> pathlib.Path | None:
  """The source file of module `name` in SOURCE_PACKAGES, found without importing anything."""
  top, *rest = name.split('.')
  if top not in SOURCE_PACKAGES or not rest:
    return None
  spec = importlib.util.find_spec(top)  # a top-level package is located, not imported
  for location in (spec.submodule_search_locations or []) if spec else []:
    base = pathlib.Path(location, *rest)
    for candidate in (base.with_name(base.name + '.py'), base / '__init__.py'):
      if candidate.is_file():
        return candidate
  return None


def _imported(path: pathlib.Path) -> Iterator[pathlib.Path]:
  """The files of the modules `path` imports from SOURCE_PACKAGES."""
  for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      # `from package import module` or `from module import name`
      names = [f'{node.module}.{a.name}' for a in node.names] + [node.module]
    for name in names:
      if (found := _module_file(name)) is not None:
        yield found


def sources(config_files: Iterable) -> list[pathlib.Path]:
  """The config files and, before each, the modules they import from SOURCE_PACKAGES (so that a
  section's own definition comes before what later files set)."""
  ordered: list[pathlib.Path] = []

  def visit(path: pathlib.Path) -> None:
    path = path.resolve()
    if path in ordered or not path.is_file():
      return
    ordered.append(path)  # (a cycle stops here)
    for imported in _imported(path):
      visit(imported)
    ordered.remove(path)
    ordered.append(path)

  for path in config_files:
    visit(pathlib.Path(path))
  return ordered


def all_config_files() -> list[pathlib.Path]:
  """Every module of the `configs` package (for a config whose file is not known)."""
  spec = importlib.util.find_spec('configs')
  return sorted(p for location in spec.submodule_search_locations
                for p in pathlib.Path(location).glob('*.py'))


def comments(config_files: Iterable) -> Comments:
  """The comments of every field the config files (and what they import) set."""
  found = Comments()
  for path in sources(config_files):
    _file_comments(path, found)
  return found


def describe(config, config_files: Iterable, title: str = '') -> str:
  """`config` one field a line, `path = value  # comment`, in the order the sources set them, each
  section's comment above its first field; each is overridable as `--config.path=value`."""
  found = comments(config_files)
  lines = [f'# {title}'] if title else []
  shown = set()
  for path, value in flatten(config, order=found.position):
    parts, section_text = path.split('.'), ''
    for i in range(1, len(parts)):
      section = '.'.join(parts[:i])
      section_text = found.get(section)
      if section not in shown:
        shown.add(section)
        if section_text:
          lines.append(f'# {section}: {section_text}')
    line, text = f'{path} = {value!r}', found.get(path)
    lines.append(f'{line:<44}  # {text}' if text and text != section_text else line)
  return '\n'.join(lines)


def unknown_field(config, path: str) -> str:
  """One line saying that `path` is not a field of `config`, with the nearest existing names."""
  parts, node = path.split('.'), config
  for i, key in enumerate(parts):
    if hasattr(node, 'keys') and key in node.keys():
      node = node[key]
      continue
    where = '.'.join(parts[:i])
    names = list(node.keys()) if hasattr(node, 'keys') else []
    if not names:
      return f'{where} is a value ({node!r}), not a section with a field {key!r}'
    near = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    prefix = f'{where}.' if where else ''
    hint = (f'nearest: {", ".join(prefix + n for n in near)}' if near
            else f'{where or "the config"} has: {", ".join(names)}')
    return f'{prefix}{key} is not a config field; {hint} (--mode=config lists every field)'
  return f'{path} is a config field'
