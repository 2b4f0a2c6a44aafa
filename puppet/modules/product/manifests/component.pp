# @summary One component of the product on a Windows node (the example module).
#
# Declared by the generated site.pp, titled by the component's name:
#
#   product::component { 'zeo_server': tag => 'zeo_server' }
#
# Everything else comes from Hiera, written by `inv generate-config`:
# deploy::components.<title> = {version, group, depends_on, artifact,
# artifact_url, sha256 (when the artifact manifest has it), parameters}.
#
# What it does on the node, with core Puppet types only (no forge modules):
# 1. creates <install_root>\<component> (install_root: a parameter, default C:\Product)
# 2. downloads the artifact from the package server (file with an http source),
#    verified with its sha256 when known
# 3. unpacks it into <install_dir>\<version> with the module's unzip.vbs run by
#    cscript.exe (Windows Server 2012 R2 has neither tar.exe nor Expand-Archive;
#    the Shell.Application zip folder is there on every Windows)
# 4. writes <install_dir>\etc\parameters.json from the component's parameters
# 5. keeps its Windows service (parameter service_name, default Product_<component>)
#    running and enabled, restarted when the release or the configuration changes;
#    a component with service_name 'none' has no service (a data volume, a runtime).
define product::component () {
  $all = lookup('deploy::components', Hash, 'first', {})
  $data = $all[$title]
  if $data =~ Undef {
    fail("product::component[${title}]: no Hiera data deploy::components.${title} for ${trusted['certname']}; re-run inv generate-config")
  }
  $params = $data['parameters'] ? { Hash => $data['parameters'], default => {} }
  $root = $params['install_root'] ? { String[1] => $params['install_root'], default => 'C:\\Product' }
  $install_dir = "${root}\\${title}"
  $download = "${install_dir}\\downloads\\${data['artifact']}"
  $release_dir = "${install_dir}\\${data['version']}"
  $unzip = "${install_dir}\\unzip.vbs"
  $cmd = 'C:\\Windows\\System32\\cmd.exe'
  $cscript = 'C:\\Windows\\System32\\cscript.exe'

  exec { "product ${title}: create ${install_dir}":
    command => "${cmd} /c mkdir \"${install_dir}\"",
    creates => $install_dir,
  }
  -> file { ["${install_dir}\\downloads", "${install_dir}\\etc"]:
    ensure => directory,
  }
  -> file { $download:
    ensure         => file,
    source         => $data['artifact_url'],
    checksum       => 'sha256',
    checksum_value => $data['sha256'],
    backup         => false,
  }
  -> file { $unzip:
    ensure => file,
    source => 'puppet:///modules/product/unzip.vbs',
  }
  -> exec { "product ${title}: unpack ${data['artifact']}":
    command => "${cscript} //nologo //B \"${unzip}\" \"${download}\" \"${release_dir}\"",
    creates => "${release_dir}\\.unpacked",
    timeout => 1800,
  }

  file { "${install_dir}\\etc\\parameters.json":
    ensure  => file,
    content => product::to_json($params, true),
    require => File["${install_dir}\\etc"],
  }

  $service = $params['service_name'] ? { String[1] => $params['service_name'], default => "Product_${title}" }
  if $service != 'none' {
    service { $service:
      ensure    => running,
      enable    => true,
      subscribe => [Exec["product ${title}: unpack ${data['artifact']}"], File["${install_dir}\\etc\\parameters.json"]],
    }
  }
}
