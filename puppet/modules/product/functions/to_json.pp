# @summary A value as JSON text (core Puppet has no to_json; stdlib is not assumed).
#
# Strings keep every character: backslash, quote and control characters are
# escaped the JSON way, everything else (non-ASCII too) is written as UTF-8.
# A Hash at the top level is written one key per line.
function product::to_json(Any $value, Boolean $pretty = false) >> String {
  case $value {
    Undef:   { 'null' }
    Boolean: { if $value { 'true' } else { 'false' } }
    Numeric: { String($value) }
    String:  {
      $escaped = $value.split('').map |$ch| {
        case $ch {
          '\\':    { '\\\\' }
          '"':     { '\\"' }
          "\n":    { '\\n' }
          "\r":    { '\\r' }
          "\t":    { '\\t' }
          default: { $ch }
        }
      }
      "\"${escaped.join('')}\""
    }
    Array: { "[${value.map |$v| { product::to_json($v) }.join(', ')}]" }
    Hash: {
      $pairs = $value.map |$k, $v| { "${product::to_json(String($k))}: ${product::to_json($v)}" }
      if $pretty and !$pairs.empty {
        "{\n  ${pairs.join(",\n  ")}\n}\n"
      } else {
        "{${pairs.join(', ')}}"
      }
    }
    default: { product::to_json(String($value)) }
  }
}
